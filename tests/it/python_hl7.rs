//! A third-party HL7 client no one here wrote, python-hl7's asyncio MLLP client, sends the whole
//! corpus through the guard, plain and TLS; every ack must be positive and answer its message, and
//! every payload must reach the receiver byte-exact. The Python is the test virtualenv
//! (`bash tests/python/venv.sh` makes it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mllp_guard::tools::peer::sink::{Sink, SinkOptions};
use mllp_guard::wire::hl7::AckCode;

use crate::harness::*;
use crate::host;

fn corpus_messages() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(files.len() >= 28, "the corpus is beside the project");
    files
}

async fn python_client(args: &[String]) -> (bool, Vec<serde_json::Value>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hl7_client.py");
    let mut cmd = tokio::process::Command::new(host::python3());
    cmd.arg(script).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("python-hl7 client finishes within 120 s")
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python-hl7 is missing: run `bash tests/python/venv.sh` (a virtualenv in target/pyenv)\n{stderr}"
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}\n{stderr}"))
        })
        .collect();
    (out.status.success(), lines)
}

async fn corpus_through_guard(tls: bool) {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let sink = Sink::start(SinkOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        ack: AckCode::AA,
        save_dir: Some(saved.clone()),
        max_message_bytes: 64 * 1024 * 1024,
        verbose: false,
    })
    .await
    .unwrap();
    let listener_tls = if tls {
        "    tls:\n      cert: guard.pem\n      key: guard.key\n"
    } else {
        ""
    };
    let guard = dir
        .guard(&route_yaml(sink.local_addr(), "", listener_tls, ""))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let files = corpus_messages();
    let mut args = vec![addr.ip().to_string(), addr.port().to_string()];
    if tls {
        args.push("--ca".into());
        args.push(dir.path("ca.pem").display().to_string());
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    let (success, lines) = python_client(&args).await;
    assert_eq!(lines.len(), files.len(), "one line per message: {lines:?}");
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
    }
    assert!(success);
    let mut saved_files: Vec<PathBuf> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    saved_files.sort();
    assert_eq!(saved_files.len(), files.len());
    for (sent, got) in files.iter().zip(&saved_files) {
        assert!(
            std::fs::read(sent).unwrap() == std::fs::read(got).unwrap(),
            "{} must arrive byte-exact",
            sent.display()
        );
    }
    guard.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_client_sends_the_corpus_through_a_plain_route() {
    corpus_through_guard(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_client_sends_the_corpus_through_a_tls_route() {
    corpus_through_guard(true).await;
}

/// Dial mode against python-hl7's own server playing the sender: the guard connects out to it,
/// and every message it sends arrives at the receiver byte-exact with a matching ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_dials_a_python_hl7_server_that_sends_the_corpus() {
    use std::io::BufRead;
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let sink = Sink::start(SinkOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        ack: AckCode::AA,
        save_dir: Some(saved.clone()),
        max_message_bytes: 64 * 1024 * 1024,
        verbose: false,
    })
    .await
    .unwrap();
    let files: Vec<PathBuf> = corpus_messages().into_iter().take(8).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hl7_sender_server.py");
    let mut server = Proc(
        std::process::Command::new(host::python3())
            .arg(script)
            .arg("127.0.0.1")
            .args(&files)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the python-hl7 server said {line:?}"))
        .to_string();
    let yaml = format!(
        "routes:\n  - name: dialer\n    dial: 127.0.0.1:{port}\n    allow: [any]\n    upstream:\n      address: {}\n      ack_timeout: 5s\n",
        sink.local_addr()
    );
    let guard = dir.guard(&yaml).await;
    let lines: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
        out.lines()
            .map_while(Result::ok)
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), files.len(), "{lines:?}");
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
    }
    assert_eq!(server.0.wait().unwrap().code(), Some(0));
    let mut got: Vec<PathBuf> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    got.sort();
    for (sent, got) in files.iter().zip(&got) {
        assert!(std::fs::read(sent).unwrap() == std::fs::read(got).unwrap());
    }
    guard.stop().await;
    sink.stop().await;
}
