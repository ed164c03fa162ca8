//! HL7 conformance of the guard's own acks, through the binary (issue 24): every kind of ack the
//! guard builds, for a message of each HL7 version 2.3 to 2.8, validated by hl7apy (a maintained
//! HL7 v2 library no one here wrote) at `VALIDATION_LEVEL.STRICT` against that version's
//! definitions, plus the rules it does not check: MSA-3 at most 80 characters and absent from
//! 2.7, MSH-7 with a UTC offset, ERR-1 before 2.5 and ERR-3/ERR-4 from 2.5, ERR-3 from table 0357
//! by cause, MSH-9 by version, MSH-11/12/18 copied, commit codes in enhanced mode, and no address
//! or OS error in any ack while the log line with the same MSH-10 has the detail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::{AckCode, AckView};

use crate::cli::{spawn_guard, start_sink};
use crate::harness::*;

pub const VERSIONS: [&str; 8] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"];

/// Starts `mllp-guard run` (JSON logs) and returns the listen address of every route by name.
pub fn start_guard_routes(
    config: &Path,
    routes: usize,
) -> (
    Proc,
    HashMap<String, SocketAddr>,
    std::sync::mpsc::Receiver<String>,
) {
    let (child, rx) = spawn_guard(config);
    let mut listening = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while listening.len() < routes && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "route listening" {
            let name = v["route"].as_str().unwrap().to_string();
            listening.insert(name, v["listen"].as_str().unwrap().parse().unwrap());
        }
    }
    assert_eq!(
        listening.len(),
        routes,
        "every route listens: {listening:?}"
    );
    (child, listening, rx)
}

/// A receiver that takes connections and never answers (bounded: it stops accepting after 120 s).
pub fn silent_receiver() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    addr
}

/// Validates acks with hl7apy (tests/python/hl7apy_validate.py): per ack, `Ok(())` or the
/// library's complaint.
pub fn hl7apy(acks: &[Vec<u8>]) -> Vec<Result<(), String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hl7apy_validate.py");
    let input: Vec<String> = acks
        .iter()
        .map(|a| a.iter().map(|&b| b as char).collect())
        .collect();
    let mut child = Command::new(crate::host::python3())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&input).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "hl7apy is missing: run `python3 -m pip install -r tests/python/requirements.txt`\n{stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), acks.len(), "one verdict per ack: {stderr}");
    lines
        .iter()
        .map(|v| match v["ok"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(v["error"].as_str().unwrap_or_default().to_string()),
        })
        .collect()
}

/// A message of `version`; `msh15` empty for original mode. CR-terminated.
pub fn message(id: &str, version: &str, processing: &str, msh15: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101120000||ADT^A01|{id}|{processing}|{version}|||{msh15}|{msh15}||8859/1\r\
         EVN|A01|20240101120000\rPID|1||12345\r"
    )
    .into_bytes()
}

/// One kind of ack the guard builds: how to provoke it and what it must carry.
struct Kind {
    name: &'static str,
    route: &'static str,
    processing: &'static str,
    msh15: &'static str,
    code: AckCode,
    /// ERR-3 (ERR-1.4 before 2.5) code; `None` for a positive ack.
    err: Option<&'static str>,
    text: &'static str,
    /// MSH-10 left empty: MSA-2 is empty too (HL7 requires it; there is nothing to echo).
    no_control_id: bool,
}

fn kinds() -> Vec<Kind> {
    let k = |name, route, processing, msh15, code, err, text| Kind {
        name,
        route,
        processing,
        msh15,
        code,
        err,
        text,
        no_control_id: false,
    };
    vec![
        k("custody accept", "custody", "P", "", AckCode::AA, None, ""),
        k(
            "custody commit",
            "custody",
            "P",
            "AL",
            AckCode::CA,
            None,
            "",
        ),
        Kind {
            no_control_id: true,
            ..k(
                "no control id",
                "custody",
                "P",
                "",
                AckCode::AR,
                Some("101"),
                "control id missing",
            )
        },
        k(
            "receiver down",
            "down",
            "P",
            "",
            AckCode::AE,
            Some("207"),
            "receiver unavailable",
        ),
        k(
            "receiver down, enhanced",
            "down",
            "P",
            "AL",
            AckCode::CE,
            Some("207"),
            "receiver unavailable",
        ),
        k(
            "no reply",
            "silent",
            "P",
            "",
            AckCode::AE,
            Some("207"),
            "no reply from receiver",
        ),
        k(
            "rule on processing id",
            "rules",
            "T",
            "",
            AckCode::AR,
            Some("202"),
            "rejected by rule no-test",
        ),
        k(
            "rule, enhanced",
            "rules",
            "T",
            "AL",
            AckCode::CR,
            Some("202"),
            "rejected by rule no-test",
        ),
        k(
            "rule on message type",
            "types",
            "P",
            "",
            AckCode::AR,
            Some("200"),
            "rejected by rule no-adt",
        ),
        k(
            "oversize",
            "rules",
            "P",
            "",
            AckCode::AE,
            Some("207"),
            "message too large",
        ),
        k(
            "malformed header",
            "rules",
            "P~T",
            "",
            AckCode::AR,
            Some("102"),
            "",
        ),
        k(
            "rate limit",
            "limited",
            "P",
            "",
            AckCode::AE,
            Some("207"),
            "rate limit",
        ),
        k(
            "invalid reply",
            "wrong",
            "P",
            "",
            AckCode::AE,
            Some("207"),
            "invalid reply from receiver",
        ),
        k(
            "ambiguous header",
            "rules",
            "P",
            "",
            AckCode::AR,
            Some("102"),
            "",
        ),
        k(
            "second message",
            "rules",
            "P",
            "",
            AckCode::AR,
            Some("100"),
            "2 messages outside a batch; send one per frame",
        ),
        k(
            "batch refused",
            "batches",
            "P",
            "",
            AckCode::AR,
            Some("200"),
            "batches not accepted",
        ),
        k(
            "batch, rule",
            "rules",
            "T",
            "",
            AckCode::AR,
            Some("202"),
            "",
        ),
    ]
}

/// A receiver that answers every frame with an ack of another control id (bounded: 120 s).
pub fn wrong_receiver() -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(120);
        listener.set_nonblocking(true).unwrap();
        while Instant::now() < until {
            let Ok((mut tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = [0u8; 65536];
                while let Ok(n) = tcp.read(&mut buf) {
                    if n == 0 || !buf[..n].contains(&0x1C) {
                        if n == 0 {
                            return;
                        }
                        continue;
                    }
                    let ack = b"MSH|^~\\&|EHR|HOSP|LAB|FAC|20240101||ACK|X|P|2.5\rMSA|AA|OTHER\r";
                    if tcp
                        .write_all(&mllp_guard::wire::codec::encode(ack))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(dir: &TestDir, sink: &str, silent: SocketAddr, dead: SocketAddr) -> String {
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "  - name: {name}\n    listen: 127.0.0.1:0\n    allow: [127.0.0.0/8]\n{extra}    upstream:\n      address: {upstream}\n      ack_timeout: 500ms\n      connect_timeout: 1s\n"
        )
    };
    let mut yaml = format!("state_dir: {}\nroutes:\n", dir.path("state").display());
    yaml += &route("custody", sink, "    delivery: store-and-forward\n");
    yaml += &route("down", &dead.to_string(), "");
    yaml += &route("silent", &silent.to_string(), "");
    yaml += &route(
        "rules",
        sink,
        "    max_message_bytes: 2KiB\n    rules:\n      - name: no-test\n        match: { processing_id: [T] }\n        action: reject\n",
    );
    yaml += &route(
        "types",
        sink,
        "    rules:\n      - name: no-adt\n        match: { message_type: [\"ADT^*\"] }\n        action: reject\n",
    );
    yaml += &route(
        "limited",
        sink,
        "    limits:\n      messages_per_second: 1\n      burst: 1\n      on_limit: reject\n",
    );
    yaml += &route("wrong", &wrong_receiver().to_string(), "");
    yaml += &route("batches", sink, "    batches: refuse\n");
    yaml
}

/// The fields of segment `id` of an ack (split on `|`), if present.
fn segment<'a>(ack: &'a str, id: &str) -> Option<Vec<&'a str>> {
    ack.split('\r')
        .find(|s| s.starts_with(id))
        .map(|s| s.split('|').collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_own_ack_is_valid_hl7_in_the_senders_version() {
    let dir = TestDir::new();
    let (_sink, sink_addr) = start_sink(&["--listen", "127.0.0.1:0"]);
    let silent = silent_receiver();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = config(&dir, &sink_addr, silent, dead);
    let path = dir.path("guard.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (_guard, routes, logs) = start_guard_routes(&path, 8);

    let mut cases = Vec::new(); // (kind index, version, ack)
    let kinds = kinds();
    for (v, version) in VERSIONS.iter().enumerate() {
        for (i, kind) in kinds.iter().enumerate() {
            let id = if kind.no_control_id {
                String::new()
            } else {
                format!("K{i}V{v}")
            };
            let mut payload = message(&id, version, kind.processing, kind.msh15);
            let mut acked = id.clone();
            match kind.name {
                "oversize" => {
                    payload.extend_from_slice(format!("NTE|1||{}\r", "x".repeat(3000)).as_bytes())
                }
                // MSH ends at a line feed, the rest of the message uses CR: two readings.
                "ambiguous header" => {
                    let at = payload.iter().position(|&b| b == b'\r').unwrap();
                    payload[at] = b'\n';
                }
                "second message" => {
                    payload.extend_from_slice(&message(&format!("{id}b"), version, "P", ""))
                }
                "batch refused" | "batch, rule" => {
                    acked = format!("B{id}");
                    let mut batch = format!("FHS|^~\\&|LAB|FAC|EHR|HOSP|20240101||||F{id}\rBHS|^~\\&|LAB|FAC|EHR|HOSP|20240101||||{acked}\r").into_bytes();
                    batch.extend_from_slice(&payload);
                    batch.extend_from_slice(b"BTS|1\rFTS|1\r");
                    payload = batch;
                }
                _ => {}
            }
            let mut client = Client::plain(routes[kind.route]).await;
            if kind.name == "rate limit" {
                // The first message takes the burst's token (if one is left); the second is refused.
                let first = message(&format!("{id}a"), version, "P", "");
                client.send(&first).await;
            }
            let ack = client.send(&payload).await;
            cases.push((i, *version, ack, acked));
        }
    }
    // The headerless ack (no version to follow): the 2.5.1 layout.
    let mut client = Client::plain(routes["rules"]).await;
    let headerless = client.send(b"PID|1||12345\r").await;

    let mut all: Vec<Vec<u8>> = cases.iter().map(|c| c.2.clone()).collect();
    assert_eq!(cases.len(), kinds.len() * VERSIONS.len());
    all.push(headerless.clone());
    let verdicts = hl7apy(&all);
    let mut failures = Vec::new();
    for ((i, version, ack, acked), verdict) in cases.iter().zip(&verdicts) {
        let kind = &kinds[*i];
        let text = String::from_utf8_lossy(ack).into_owned();
        let mut fail =
            |why: String| failures.push(format!("{} {version}: {why}\n  {text:?}", kind.name));
        match verdict {
            Ok(()) => {}
            Err(e) if kind.no_control_id && e.contains("MSA.MSA_2") => {}
            Err(e) => fail(format!("hl7apy: {e}")),
        }
        let view = AckView::parse(ack).unwrap();
        if view.code() != kind.code {
            fail(format!("code {} not {}", view.code(), kind.code));
        }
        if view.acked_control_id() != acked.as_bytes() {
            fail(format!("MSA-2 is not {acked:?}"));
        }
        let msh = segment(&text, "MSH").unwrap();
        let msa = segment(&text, "MSA").unwrap();
        let v27 = version.starts_with("2.7") || version.starts_with("2.8");
        let before_25 = ["2.3", "2.3.1", "2.4"].contains(version);
        // MSH-7 with an offset; MSH-9 by version; MSH-11/12/18 copied.
        let ts = msh[6];
        if !(ts.len() == 19 && (ts[14..].starts_with('+') || ts[14..].starts_with('-'))) {
            fail(format!("MSH-7 {ts:?} has no UTC offset"));
        }
        let msh9 = if *version == "2.3" {
            "ACK^A01"
        } else {
            "ACK^A01^ACK"
        };
        if msh[8] != msh9 {
            fail(format!("MSH-9 {:?}, expected {msh9:?}", msh[8]));
        }
        let processing = kind.processing.split('~').next().unwrap();
        if msh.get(10) != Some(&processing) || msh.get(11) != Some(version) {
            fail(format!(
                "MSH-11/12 {:?}/{:?} not copied",
                msh.get(10),
                msh.get(11)
            ));
        }
        if msh.get(17) != Some(&"8859/1") {
            fail(format!("MSH-18 {:?} not copied", msh.get(17)));
        }
        // MSA-3: at most 80 characters, withdrawn from 2.7; the fixed text, nothing inside.
        match (v27, msa.get(3)) {
            (true, Some(t)) => fail(format!("MSA-3 {t:?} in {version}")),
            (false, Some(t)) if t.len() > 80 => fail(format!("MSA-3 of {} chars", t.len())),
            (false, Some(t)) if !kind.text.is_empty() && *t != kind.text => {
                fail(format!("MSA-3 {t:?}, expected {:?}", kind.text))
            }
            _ => {}
        }
        if text.contains("127.0.0.1") || text.contains("os error") {
            fail("an address or OS error in the ack".into());
        }
        // ERR: ERR-1 (ELD) before 2.5, ERR-3/ERR-4 from 2.5, with the table 0357 code.
        match (kind.err, segment(&text, "ERR")) {
            (None, None) => {}
            (None, Some(_)) => fail("ERR in a positive ack".into()),
            (Some(_), None) => fail("no ERR in a negative ack".into()),
            (Some(code), Some(err)) if before_25 => {
                let eld: Vec<&str> = err.get(1).unwrap_or(&"").split('^').collect();
                let expected = format!("{code}&");
                if err.len() != 2
                    || eld.len() != 4
                    || !eld[3].starts_with(&expected)
                    || !eld[3].ends_with("&HL70357")
                {
                    fail(format!("ERR {err:?} is not ERR-1 = ^^^{code}&name&HL70357"));
                }
            }
            (Some(code), Some(err)) => {
                let err3 = err.get(3).unwrap_or(&"");
                if !err3.starts_with(&format!("{code}^"))
                    || !err3.ends_with("^HL70357")
                    || err.get(4) != Some(&"E")
                    || !err.get(1).unwrap_or(&"").is_empty()
                {
                    fail(format!(
                        "ERR {err:?} is not ERR-3 = {code}^name^HL70357, ERR-4 = E"
                    ));
                }
                let err8 = err.get(8).unwrap_or(&"");
                if err8.len() > 80 || (!kind.text.is_empty() && *err8 != kind.text) {
                    fail(format!("ERR-8 {err8:?}, expected {:?}", kind.text));
                }
            }
        }
    }
    // The headerless ack: 2.5.1, MSH-11 valued, ERR-3 100; MSA-2 is empty (nothing to echo).
    match verdicts.last().unwrap() {
        Ok(()) => {}
        Err(e) if e.contains("MSA.MSA_2") => {}
        Err(e) => failures.push(format!("headerless: hl7apy: {e}")),
    }
    let text = String::from_utf8_lossy(&headerless).into_owned();
    assert!(
        text.contains("||ACK|")
            && text.contains("|P|2.5.1\r")
            && text.contains("|100^Segment sequence error^HL70357|E"),
        "{text:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // One ack of each kind for 2.3, 2.5.1 and 2.8, for the record (`--nocapture` shows them).
    for (i, version, ack, _) in &cases {
        if ["2.3", "2.5.1", "2.8"].contains(version) {
            eprintln!("{:<26} {version:<6} {}", kinds[*i].name, ack.escape_ascii());
        }
    }
    eprintln!(
        "{:<26} {:<6} {}",
        "no header",
        "2.5.1",
        headerless.escape_ascii()
    );

    // The detail of a refusal is in the log line with the same MSH-10, not in the ack.
    let mut detail = None;
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "message" && v["control_id"] == "K3V0" {
            detail = v["error"].as_str().map(str::to_string);
        }
    }
    let detail = detail.expect("an audit line for K3V0 with the error");
    assert!(detail.contains(&dead.to_string()), "{detail}");
}
