//! A third-party HL7 client no one here wrote, python-hl7's asyncio MLLP client, sends the whole
//! corpus through the guard, plain and TLS; every ack must be positive and answer its message, and
//! every payload must reach the receiver byte-exact. `pip install -r tests/python/requirements.txt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mllp_guard::hl7::AckCode;
use mllp_guard::peer::sink::{Sink, SinkOptions};

use crate::harness::*;

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
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("python-hl7 client finishes within 120 s")
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python-hl7 is missing: run `python3 -m pip install -r tests/python/requirements.txt`\n{stderr}"
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
