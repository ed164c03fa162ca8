//! The `mllp-guard` binary as a stranger uses it: `check`, `run` (with SIGTERM), `send`, `sink`
//! and `demo`, each a real process on loopback, killed when the test ends.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

impl Proc {
    /// Waits (bounded) for the process to exit and returns its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn guard_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.stdin(Stdio::null());
    cmd
}

/// `mllp-guard check --config file`, run to its end.
fn check(file: &Path) -> std::process::Output {
    guard_cmd()
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap()
}

/// `check` of a file holding `yaml`, which must fail with exit code 2: the file's name as shown,
/// and what `check` printed on stderr.
pub fn check_fails(yaml: &str) -> (String, String) {
    let dir = TestDir::new();
    let file = dir.path("guard.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    (file.display().to_string(), stderr)
}

/// Starts `mllp-guard sink` and returns it with the address it printed.
pub fn start_sink(args: &[&str]) -> (Proc, String) {
    let mut child = guard_cmd()
        .arg("sink")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("sink said {line:?}"))
        .to_string();
    (Proc(child), addr)
}

/// Starts `mllp-guard sink` on a free loopback port, saving each message it gets under `saved`.
pub fn start_saving_sink(saved: &Path) -> (Proc, String) {
    start_sink(&[
        "--listen",
        "127.0.0.1:0",
        "--save-dir",
        saved.to_str().unwrap(),
    ])
}

/// Starts `mllp-guard run` with JSON logs and returns it with the address its route listens on.
pub fn start_guard(config: &Path) -> (Proc, String, std::sync::mpsc::Receiver<String>) {
    let (guard, listen, logs, _) = start_guard_logged(config);
    (guard, listen, logs)
}

/// Like [`start_guard`], also returning the log lines written before the route listened.
pub fn start_guard_logged(
    config: &Path,
) -> (Proc, String, std::sync::mpsc::Receiver<String>, Vec<String>) {
    let (child, rx) = spawn_guard(config);
    let mut early = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["message"] == "route listening" {
            return (child, v["listen"].as_str().unwrap().to_string(), rx, early);
        }
        early.push(line);
    }
    panic!("the guard did not report a listening route within 20 s");
}

/// Spawns `mllp-guard run` with JSON logs at debug level; its log lines arrive on the receiver.
pub fn spawn_guard(config: &Path) -> (Proc, std::sync::mpsc::Receiver<String>) {
    spawn_guard_filtered(config, "debug")
}

/// Like [`spawn_guard`], with this `MLLP_GUARD_LOG` filter.
pub fn spawn_guard_filtered(
    config: &Path,
    filter: &str,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut child = Proc(
        guard_cmd()
            .args(["--log-format", "json", "run", "--config"])
            .env("MLLP_GUARD_LOG", filter)
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[test]
fn check_accepts_a_valid_config_with_one_line_per_route() {
    let dir = TestDir::new();
    let file = dir.path("ok.yaml");
    std::fs::write(
        &file,
        route_yaml("127.0.0.1:2576".parse().unwrap(), "", "", ""),
    )
    .unwrap();
    let out = check(&file);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with("route test: 127.0.0.1:0 (plain) allow [127.0.0.1/32] -> 127.0.0.1:2576 (plain, connections paired)"), "{stdout}");
}

#[test]
fn check_reports_every_error_with_its_location_and_exits_2() {
    let (shown, stderr) = check_fails(
        "routes:\n  - name: Lab\n    listen: 127.0.0.1:2575\n    allow: [10.0.0.0/33]\n    upstream:\n      address: 127.0.0.1:2576\n  - name: Lab\n    listen: 127.0.0.1:2575\n    allow: []\n    upstream:\n      address: 127.0.0.1:2576\n",
    );
    assert!(
        stderr.contains(&format!("{shown}:2:11: routes[0].name")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{shown}:4:13: routes[0].allow[0]")),
        "{stderr}"
    );
    assert!(stderr.contains("routes[1].listen"), "{stderr}");
    assert!(
        stderr.lines().count() >= 4,
        "every error is reported:\n{stderr}"
    );
}

#[test]
fn run_send_and_sink_relay_the_corpus_and_sigterm_exits_0() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, sink_addr) = start_saving_sink(&saved);
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(
            sink_addr.parse().unwrap(),
            "",
            "    tls:\n      cert: guard.pem\n      key: guard.key\n",
            "",
        ),
    )
    .unwrap();
    let (mut guard, listen, logs) = start_guard(&config);
    let files = [
        "01_adt_a01.hl7",
        "13_iso8859_1_names.hl7",
        "10_hash_field_separator.hl7",
        "16_batch_file.hl7",
    ];
    let out = guard_cmd()
        .args(["send", "--to", &listen, "--tls-ca"])
        .arg(dir.path("ca.pem"))
        .args(["--server-name", "localhost", "--timeout", "10s"])
        .args(files.iter().map(|f| corpus(f)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    let ids: Vec<(&str, &str)> = lines.iter().map(|f| (f[1], f[2])).collect();
    assert_eq!(
        ids,
        [
            ("ADT0001", "AA"),
            ("CHR0002", "AA"),
            ("ENC0002", "AA"),
            ("FILE0001", "AA")
        ]
    );
    let mut saved_files: Vec<_> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    saved_files.sort();
    for (file, got) in files.iter().zip(&saved_files) {
        assert!(
            corpus_bytes(file) == std::fs::read(got).unwrap(),
            "{file} byte-exact"
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(guard.wait_exit(Duration::from_secs(15)), Some(0));

    // The log names messages by type and control id and never carries payload bytes, even at
    // debug level: the corpus patients are called TESTPATIENT and live on FAKE STREET.
    // The process has exited, so its stderr reader ends soon: drain it (bounded).
    let mut lines = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    let messages: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["message"] == "message")
        .collect();
    // Three messages, and the batch file: one line for the batch and one for each of its three
    // messages (each is judged and audited by its own control id).
    assert_eq!(messages.len(), 7, "one log line per message");
    assert_eq!(messages[0]["control_id"], "ADT0001");
    assert_eq!(messages[0]["message_type"], "ADT^A01^ADT_A01");
    assert_eq!(messages[0]["ack"], "AA");
    for line in &lines {
        assert!(
            !line.contains("TESTPATIENT") && !line.contains("FAKE STREET"),
            "payload in a log line: {line}"
        );
    }
}

#[test]
fn send_exits_nonzero_when_the_receiver_answers_ae() {
    let (_sink, sink_addr) = start_sink(&["--listen", "127.0.0.1:0", "--ack", "AE"]);
    let out = guard_cmd()
        .args(["send", "--to", &sink_addr, "--timeout", "5s"])
        .arg(corpus("01_adt_a01.hl7"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.trim().split('\t').collect();
    assert_eq!(&fields[1..3], ["ADT0001", "AE"]);
}

#[test]
fn send_a_directory_sends_its_files_in_name_order() {
    let dir = TestDir::new();
    let msgs = dir.path("msgs");
    std::fs::create_dir(&msgs).unwrap();
    std::fs::write(msgs.join("b.hl7"), message("SECOND", 200)).unwrap();
    std::fs::write(msgs.join("a.hl7"), message("FIRST", 200)).unwrap();
    let (_sink, sink_addr) = start_sink(&["--listen", "127.0.0.1:0"]);
    let out = guard_cmd()
        .args(["send", "--to", &sink_addr])
        .arg(&msgs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(ids, ["FIRST", "SECOND"]);
}

#[test]
fn demo_relays_the_sample_messages_over_tls_with_the_shipped_config() {
    demo_on_free_ports(None);
}

#[test]
fn the_current_thread_runtime_relays_the_demo_too() {
    demo_on_free_ports(Some("current-thread"));
}

#[test]
fn the_multi_thread_runtime_relays_the_demo_too() {
    demo_on_free_ports(Some("multi-thread"));
}

#[test]
fn an_unknown_runtime_is_refused_with_exit_2() {
    let out = guard_cmd()
        .args(["check", "--config", "/nonexistent.yaml"])
        .env("MLLP_GUARD_RUNTIME", "green-threads")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MLLP_GUARD_RUNTIME=\"green-threads\": expected per-core (the default), multi-thread or current-thread"),
        "{stderr}"
    );
}

/// `demo` on a copy of the shipped quick-start config moved to free ports, with
/// `MLLP_GUARD_RUNTIME` set to `runtime` when given.
fn demo_on_free_ports(runtime: Option<&str>) {
    let dir = TestDir::new();
    // The demo's shipped config uses fixed ports; run a copy on free ports so tests never clash.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/quickstart.yaml"),
    )
    .unwrap();
    let free = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let yaml = shipped
        .replace("127.0.0.1:2575", &format!("127.0.0.1:{}", free(())))
        .replace("127.0.0.1:2576", &format!("127.0.0.1:{}", free(())))
        .replace(
            "certs/",
            &format!("{}/rules/certs/", env!("CARGO_MANIFEST_DIR")),
        );
    let config = dir.path("quickstart.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut demo = guard_cmd();
    demo.args(["demo", "--config"]).arg(&config);
    if let Some(runtime) = runtime {
        demo.env("MLLP_GUARD_RUNTIME", runtime);
    }
    let out = demo.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("demo: 8 of 8 messages relayed and acked; the receiver got 8"),
        "{stdout}"
    );
}

#[test]
fn send_json_reports_one_object_per_message_even_with_many_files() {
    let dir = TestDir::new();
    let msgs = dir.path("many");
    std::fs::create_dir(&msgs).unwrap();
    for i in 0..8 {
        std::fs::write(
            msgs.join(format!("{i}.hl7")),
            message(&format!("J-{i}"), 200),
        )
        .unwrap();
    }
    let (_sink, sink_addr) = start_sink(&["--listen", "127.0.0.1:0"]);
    let out = guard_cmd()
        .args(["send", "--json", "--to", &sink_addr])
        .arg(&msgs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(rows.len(), 8, "the progress bar never mixes into stdout");
    assert_eq!(rows[0]["control_id"], "J-0");
    assert_eq!(rows[0]["ack"], "AA");
    assert_eq!(rows[0]["ok"], true);
    assert!(rows[0]["latency_ms"].as_f64().is_some());
    assert!(rows[0]["problem"].is_null());
}

#[test]
fn check_print_is_the_effective_config_and_loads_back() {
    let dir = TestDir::new();
    let file = dir.path("short.yaml");
    std::fs::write(
        &file,
        route_yaml("127.0.0.1:2576".parse().unwrap(), "", "", ""),
    )
    .unwrap();
    let out = guard_cmd()
        .args(["check", "--print", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout).unwrap();
    for default in [
        "receive_timeout: 30s",
        "max_message_bytes: 16777216",
        "on_upstream_failure: nack",
        "connections: paired",
        "idle_reopen: on-demand",
    ] {
        assert!(printed.contains(default), "{default} missing:\n{printed}");
    }
    let again = dir.path("printed.yaml");
    std::fs::write(&again, &printed).unwrap();
    let out = check(&again);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_says_the_build() {
    let out = guard_cmd().arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("mllp-guard 0.1.0 (git "), "{text}");
    assert!(text.contains("rustc "), "{text}");
}

#[test]
fn check_reports_an_unknown_key_and_the_errors_after_it_in_one_run() {
    let (shown, stderr) = check_fails(
        "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [127.0.0.1]\n    receive_timeout: 5x\n    upstream:\n      adress: 127.0.0.1:2576\n",
    );
    assert!(
        stderr.contains(&format!("{shown}:5:22: routes[0].receive_timeout: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{shown}:7:7: routes[0].upstream.adress: unknown key `adress` (did you mean `address`?)"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn check_does_not_describe_a_store_and_forward_route_by_connections_it_does_not_use() {
    let dir = TestDir::new();
    let file = dir.path("custody.yaml");
    std::fs::write(
        &file,
        format!(
            "state_dir: {}\nroutes:\n  - name: lab\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1]\n    delivery: store-and-forward\n    upstream:\n      address: 127.0.0.1:2576\n",
            dir.path("state").display()
        ),
    )
    .unwrap();
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("-> 127.0.0.1:2576 (plain); delivery store-and-forward"),
        "{stdout}"
    );
    assert!(!stdout.contains("connections paired"), "{stdout}");
}

/// Two runs of `sink --save-dir` into one directory: the second numbers on after the first, so
/// the files never read as one run's sequence with gaps or overwrite each other.
#[test]
fn sink_save_dir_numbers_on_after_an_earlier_run() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    for (run, id) in ["RUN1", "RUN2"].iter().enumerate() {
        let (sink, addr) = start_sink(&[
            "--listen",
            "127.0.0.1:0",
            "--save-dir",
            saved.to_str().unwrap(),
        ]);
        let file = dir.path(&format!("{id}.hl7"));
        std::fs::write(&file, message(id, 200)).unwrap();
        let out = guard_cmd()
            .args(["send", "--to", &addr])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "run {run}");
        drop(sink);
    }
    let mut names: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["000001_RUN1.hl7", "000002_RUN2.hl7"]);
}
