//! TLS policy and egress end to end over loopback: CRLs on both legs (with the log line naming
//! the revoked certificate), `min_version` and `cipher_suites` against Python `ssl` and
//! `openssl s_client`, PKCS#12 bundles and encrypted keys made by the openssl CLI,
//! `allowed_identities`, SOCKS5 and HTTP CONNECT egress through small proxies written here, and
//! `check`'s expiry report. Every listener binds port 0; every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cli::start_guard;
use crate::harness::{ack_of, message, Behaviour, Client, FakeUpstream, TestDir, BIN};
use crate::pki::Usage;

/// A one-route config with the listener's `tls` block (`listener_tls`, indented under `tls:`;
/// empty = plaintext) and the upstream's extra keys (`upstream_extra`, indented for the
/// upstream block).
fn config(listener_tls: &str, address: &str, upstream_extra: &str) -> String {
    let tls = if listener_tls.is_empty() {
        String::new()
    } else {
        format!("    tls:\n{listener_tls}")
    };
    format!(
        "routes:\n  - name: test\n    listen: 127.0.0.1:0\n{tls}    allow: [127.0.0.1/32]\n    upstream:\n      address: {address}\n      ack_timeout: 3s\n      connect_timeout: 3s\n      reconnect: {{ initial: 50ms, max: 100ms }}\n{upstream_extra}"
    )
}

/// The guard's server certificate (`guard.pem/key`, SAN localhost) with client certificates
/// from the test CA required.
const MTLS: &str = "      cert: guard.pem\n      key: guard.key\n      client_ca: ca.pem\n";

/// Whether the guard refuses this TLS client: the handshake fails, or the connection is closed
/// instead of acking (TLS 1.3 clients learn of a refused certificate only on their first read).
async fn refused(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut client) = Client::tls(addr, cfg).await else {
        return true;
    };
    let framed = mllp_guard::wire::codec::encode(&message("REFUSED?", 200));
    if client.link.send(&framed).await.is_err() {
        return true;
    }
    client.read_ack().await.is_none()
}

/// Waits (bounded) for a JSON log line whose message contains `needle`; returns it parsed.
fn log_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"].as_str().is_some_and(|m| m.contains(needle)) {
            return v;
        }
        seen.push(line);
    }
    panic!(
        "no log line containing {needle:?}; saw:\n{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_logged_with_its_serial_and_issuer() {
    let dir = TestDir::new();
    dir.leaf_with("revoked.example.org", Usage::Client, 0x0bad, 365, "revoked");
    dir.crl("ca.crl", &[0x0bad], -1, 7);
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let file = dir.path("guard.yaml");
    let listener = format!("{MTLS}      crl: [ca.crl]\n");
    std::fs::write(&file, config(&listener, &upstream.addr.to_string(), "")).unwrap();
    let (_guard, addr, logs) = start_guard(&file);
    let addr: SocketAddr = addr.parse().unwrap();

    let mut lab = Client::tls(addr, dir.client_tls("ca.pem", Some("lab")))
        .await
        .unwrap();
    let (code, _, _) = ack_of(&lab.send(&message("LAB-1", 200)).await);
    assert_eq!(code, AckCode::AA);

    assert!(refused(addr, dir.client_tls("ca.pem", Some("revoked"))).await);
    let line = log_line(&logs, "it is revoked");
    assert_eq!(line["serial"], "0b:ad", "{line}");
    assert_eq!(line["issuer"], "CN=test CA", "{line}");
    assert_eq!(line["side"], "client certificate", "{line}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_upstream_certificate_is_refused_logged_and_the_sender_gets_an_ae() {
    let dir = TestDir::new();
    dir.leaf_with("ehr.example.org", Usage::Server, 0x0e42, 365, "ehr-revoked");
    dir.crl("ca.crl", &[0x0e42], -1, 7);
    let upstream =
        FakeUpstream::start_with_tls(Behaviour::Ack, Some(dir.server_tls("ehr-revoked", None)))
            .await;
    let file = dir.path("guard.yaml");
    let tls = "      tls:\n        ca: ca.pem\n        server_name: ehr.example.org\n        crl: [ca.crl]\n";
    std::fs::write(&file, config("", &upstream.addr.to_string(), tls)).unwrap();
    let (_guard, addr, logs) = start_guard(&file);

    let mut client = Client::plain(addr.parse().unwrap()).await;
    let (code, id, text) = ack_of(&client.send(&message("EHR-1", 200)).await);
    assert_eq!((code, id.as_str()), (AckCode::AE, "EHR-1"));
    assert_eq!(
        text, "receiver unavailable",
        "the detail is in the log, not the ack"
    );
    let line = log_line(&logs, "it is revoked");
    assert_eq!(line["serial"], "0e:42", "{line}");
    assert_eq!(line["issuer"], "CN=test CA", "{line}");
    assert_eq!(line["side"], "upstream server certificate", "{line}");
    assert!(upstream.received().is_empty());
}

#[test]
fn an_expired_crl_stops_the_guard_at_start_unless_fail_open_is_chosen() {
    let dir = TestDir::new();
    dir.crl("stale.crl", &[1], -10, -1);
    let file = dir.path("guard.yaml");
    let listener = format!("{MTLS}      crl: [stale.crl]\n");
    std::fs::write(&file, config(&listener, "127.0.0.1:2576", "")).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].tls.crl[0]: file \"stale.crl\" holds a CRL of \"CN=test CA\" that expired at "),
        "{stderr}"
    );

    let open = format!("{listener}      crl_expired: fail-open\n");
    std::fs::write(&file, config(&open, "127.0.0.1:2576", "")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("ERROR")
            && stderr.contains("still using it because crl_expired is fail-open"),
        "{stderr}"
    );
    assert!(
        stdout.contains("warning: route test listener CRL ")
            && stdout.contains("is stale: its next update was due at "),
        "{stdout}"
    );
}

/// Runs Python's `ssl` against `addr` (TLS 1.2 at most when `tls12_only`, with OpenSSL cipher
/// string `ciphers` if given); returns "ok <cipher>" or "refused <reason>".
async fn python_tls(dir: &TestDir, addr: SocketAddr, tls12_only: bool, ciphers: &str) -> String {
    let script = r#"
import socket, ssl, sys
host, port, ca, tls12_only, ciphers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
if tls12_only:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
if ciphers:
    ctx.set_ciphers(ciphers)
try:
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            print("ok", tls.cipher()[0])
except (ssl.SSLError, ConnectionError) as e:
    print("refused", e)
"#;
    let out = tokio::process::Command::new(crate::host::python3())
        .arg("-c")
        .arg(script)
        .arg("127.0.0.1")
        .arg(addr.port().to_string())
        .arg(dir.path("ca.pem"))
        .arg(if tls12_only { "1" } else { "0" })
        .arg(ciphers)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_tls_1_2_only_clients() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let listener = "      cert: guard.pem\n      key: guard.key\n      min_version: \"1.3\"\n";
    let guard = dir
        .guard(&config(listener, &upstream.addr.to_string(), ""))
        .await;
    let addr = guard.local_addr("test").unwrap();

    // rustls limited to TLS 1.2.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::pem_file_iter(
            dir.path("ca.pem"),
        )
        .unwrap()
        .map(Result::unwrap),
    );
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = Client::tls(addr, Arc::new(tls12))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("alert"), "{err}");

    // Python's ssl (OpenSSL) limited to TLS 1.2, then unrestricted.
    let said = python_tls(&dir, addr, true, "").await;
    assert!(said.starts_with("refused"), "{said}");
    let said = python_tls(&dir, addr, false, "").await;
    assert!(said.starts_with("ok TLS_"), "{said}");

    let mut client = Client::tls(addr, dir.client_tls("ca.pem", None))
        .await
        .unwrap();
    let (code, _, _) = ack_of(&client.send(&message("V13", 200)).await);
    assert_eq!(code, AckCode::AA);
    guard.stop().await;
}

/// `openssl s_client` offering only this TLS 1.3 suite; returns its combined output.
fn s_client_tls13(dir: &TestDir, addr: SocketAddr, suite: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args([
            "-tls1_3",
            "-ciphersuites",
            suite,
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(dir.path("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl CLI runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cipher_suite_outside_the_list_is_refused_and_one_inside_is_used() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let listener = "      cert: guard.pem\n      key: guard.key\n      cipher_suites: [TLS13_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n";
    let guard = dir
        .guard(&config(listener, &upstream.addr.to_string(), ""))
        .await;
    let addr = guard.local_addr("test").unwrap();

    // TLS 1.2 through Python's ssl.
    let said = python_tls(&dir, addr, true, "ECDHE-ECDSA-AES128-GCM-SHA256").await;
    assert!(said.starts_with("refused"), "{said}");
    let said = python_tls(&dir, addr, true, "ECDHE-ECDSA-AES256-GCM-SHA384").await;
    assert_eq!(said, "ok ECDHE-ECDSA-AES256-GCM-SHA384");

    // TLS 1.3 through openssl s_client.
    let out = s_client_tls13(&dir, addr, "TLS_AES_128_GCM_SHA256");
    assert!(
        out.contains("alert handshake failure") || out.contains("no shared cipher"),
        "{out}"
    );
    let out = s_client_tls13(&dir, addr, "TLS_AES_256_GCM_SHA384");
    assert!(out.contains("Cipher is TLS_AES_256_GCM_SHA384"), "{out}");
    guard.stop().await;
}

/// Runs the openssl CLI in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a guard whose listener uses `listener_tls`, sends one message over TLS and returns
/// the ack code.
async fn ack_through(dir: &TestDir, listener_tls: &str) -> AckCode {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&config(listener_tls, &upstream.addr.to_string(), ""))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut client = Client::tls(addr, dir.client_tls("ca.pem", None))
        .await
        .unwrap();
    let (code, _, _) = ack_of(&client.send(&message("P12", 200)).await);
    guard.stop().await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs12_bundles_with_and_without_a_password_and_encrypted_keys_serve_tls() {
    let dir = TestDir::new();
    let d = dir.dir.path();
    std::fs::write(dir.path("p12.pass"), "s3cret pass\n").unwrap();
    let export = [
        "pkcs12",
        "-export",
        "-in",
        "guard.pem",
        "-inkey",
        "guard.key",
    ];
    // OpenSSL 3 defaults: PBES2 with AES-256-CBC and an HMAC-SHA256 MAC.
    openssl(
        d,
        &[
            &export[..],
            &["-out", "modern.p12", "-passout", "file:p12.pass"],
        ]
        .concat(),
    );
    // Legacy: 3DES for the key, RC2 for the certificates, SHA-1 MAC.
    openssl(
        d,
        &[
            &export[..],
            &["-legacy", "-out", "legacy.p12", "-passout", "file:p12.pass"],
        ]
        .concat(),
    );
    // No password at all.
    openssl(
        d,
        &[&export[..], &["-out", "open.p12", "-passout", "pass:"]].concat(),
    );
    // A PKCS#8 key encrypted with PBES2/AES-256-CBC.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "guard.key",
            "-out",
            "guard-enc.key",
            "-passout",
            "file:p12.pass",
        ],
    );

    for p12 in ["modern.p12", "legacy.p12"] {
        let tls = format!("      cert: {p12}\n      password_file: p12.pass\n");
        assert_eq!(ack_through(&dir, &tls).await, AckCode::AA, "{p12}");
    }
    assert_eq!(
        ack_through(&dir, "      cert: open.p12\n").await,
        AckCode::AA
    );
    let enc = "      cert: guard.pem\n      key: guard-enc.key\n      password_file: p12.pass\n";
    assert_eq!(ack_through(&dir, enc).await, AckCode::AA);

    // A wrong password is named with the file it is for.
    std::fs::write(dir.path("wrong.pass"), "guess\n").unwrap();
    let file = dir.path("guard.yaml");
    for (tls, key, shown) in [
        (
            "      cert: modern.p12\n      password_file: wrong.pass\n",
            "cert",
            "modern.p12",
        ),
        (
            "      cert: guard.pem\n      key: guard-enc.key\n      password_file: wrong.pass\n",
            "key",
            "guard-enc.key",
        ),
    ] {
        std::fs::write(&file, config(tls, "127.0.0.1:2576", "")).unwrap();
        let err = mllp_guard::config::Config::load(&file)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(&format!(
                "routes[0].tls.{key}: file \"{shown}\" cannot be opened with the password from password_file (wrong password)"
            )),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_identities_pin_the_upstream_beyond_the_hostname_check() {
    let dir = TestDir::new();
    let upstream =
        FakeUpstream::start_with_tls(Behaviour::Ack, Some(dir.server_tls("ehr", None))).await;
    let send = |allowed: &'static str| {
        let dir = &dir;
        let address = upstream.addr.to_string();
        async move {
            let tls = format!("      tls:\n        ca: ca.pem\n        server_name: ehr.example.org\n        allowed_identities: [{allowed}]\n");
            let guard = dir.guard(&config("", &address, &tls)).await;
            let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
            let ack = ack_of(&client.send(&message("PIN", 200)).await);
            guard.stop().await;
            ack
        }
    };
    let (code, _, text) = send("lab.example.org").await;
    assert_eq!(code, AckCode::AE);
    assert_eq!(text, "receiver unavailable");
    let (code, _, _) = send("ehr.example.org").await;
    assert_eq!(code, AckCode::AA);
    assert_eq!(upstream.received().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Egress proxies
// ---------------------------------------------------------------------------------------------

/// How a test proxy treats clients.
#[derive(Clone, Copy)]
enum ProxyMode {
    /// Tunnels for anyone.
    Open,
    /// Tunnels only with this username and password.
    Auth(&'static str, &'static str),
    /// Refuses every tunnel (SOCKS5 reply 2, HTTP 403).
    Refuse,
}

/// A loopback SOCKS5 or HTTP CONNECT proxy that records the targets it was asked for.
struct TestProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestProxy {
    async fn socks5(mode: ProxyMode) -> TestProxy {
        TestProxy::start(mode, true).await
    }

    async fn http(mode: ProxyMode) -> TestProxy {
        TestProxy::start(mode, false).await
    }

    async fn start(mode: ProxyMode, socks: bool) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, stopped) = (targets.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (conn, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                let (seen, stopped) = (seen.clone(), stopped.clone());
                tokio::spawn(async move {
                    let served = async {
                        if socks {
                            serve_socks5(conn, mode, &seen).await
                        } else {
                            serve_http(conn, mode, &seen).await
                        }
                    };
                    tokio::select! {
                        _ = stopped.cancelled() => {}
                        _ = served => {}
                    }
                });
            }
        });
        TestProxy {
            addr,
            targets,
            stop,
        }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

async fn serve_socks5(
    mut conn: TcpStream,
    mode: ProxyMode,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    conn.read_exact(&mut methods).await?;
    match mode {
        ProxyMode::Auth(user, pass) => {
            if !methods.contains(&2) {
                return conn.write_all(&[5, 0xff]).await;
            }
            conn.write_all(&[5, 2]).await?;
            let mut ver_len = [0u8; 2];
            conn.read_exact(&mut ver_len).await?;
            let mut got_user = vec![0u8; usize::from(ver_len[1])];
            conn.read_exact(&mut got_user).await?;
            let mut plen = [0u8; 1];
            conn.read_exact(&mut plen).await?;
            let mut got_pass = vec![0u8; usize::from(plen[0])];
            conn.read_exact(&mut got_pass).await?;
            if got_user != user.as_bytes() || got_pass != pass.as_bytes() {
                return conn.write_all(&[1, 1]).await;
            }
            conn.write_all(&[1, 0]).await?;
        }
        ProxyMode::Open | ProxyMode::Refuse => conn.write_all(&[5, 0]).await?,
    }
    let mut req = [0u8; 4];
    conn.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            conn.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        4 => {
            let mut ip = [0u8; 16];
            conn.read_exact(&mut ip).await?;
            std::net::Ipv6Addr::from(ip).to_string()
        }
        _ => {
            let mut len = [0u8; 1];
            conn.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            conn.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
    };
    let mut port = [0u8; 2];
    conn.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    seen.lock().unwrap().push(format!("{host}:{port}"));
    if matches!(mode, ProxyMode::Refuse) {
        return conn.write_all(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    }
    let Ok(mut target) = TcpStream::connect((host.as_str(), port)).await else {
        return conn.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    conn.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut target)
        .await
        .map(|_| ())
}

async fn serve_http(
    mut conn: TcpStream,
    mode: ProxyMode,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        let mut byte = [0u8; 1];
        if conn.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.strip_suffix(" HTTP/1.1"))
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push(target.clone());
    if let ProxyMode::Auth(user, pass) = mode {
        // base64("guard:s3cret"), the only credentials these tests use.
        assert_eq!((user, pass), ("guard", "s3cret"));
        if !head.contains("\r\nProxy-Authorization: Basic Z3VhcmQ6czNjcmV0\r\n") {
            return conn
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                .await;
        }
    }
    if matches!(mode, ProxyMode::Refuse) {
        return conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
    }
    let (host, port) = target.rsplit_once(':').unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(mut upstream) = TcpStream::connect((host, port.parse().unwrap_or(0))).await else {
        return conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
    };
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream)
        .await
        .map(|_| ())
}

/// Sends one message through a guard whose upstream is `address` with `upstream_extra`;
/// returns the ack's code and text.
async fn through_guard(dir: &TestDir, address: &str, upstream_extra: &str) -> (AckCode, String) {
    let guard = dir.guard(&config("", address, upstream_extra)).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, id, text) = ack_of(&client.send(&message("EGRESS", 200)).await);
    assert_eq!(id, "EGRESS");
    guard.stop().await;
    (code, text)
}

const UPSTREAM_TLS: &str = "      tls:\n        ca: ca.pem\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_egress_carries_plain_and_end_to_end_tls_upstreams() {
    let dir = TestDir::new();
    std::fs::write(dir.path("proxy.pass"), "s3cret\n").unwrap();
    let plain = FakeUpstream::start(Behaviour::Ack).await;
    let tls = FakeUpstream::start_with_tls(Behaviour::Ack, Some(dir.server_tls("ehr", None))).await;

    let open = TestProxy::socks5(ProxyMode::Open).await;
    let via = format!("      via:\n        socks5: {}\n", open.addr);
    let (code, _) = through_guard(&dir, &plain.addr.to_string(), &via).await;
    assert_eq!(code, AckCode::AA);
    assert_eq!(open.targets(), [plain.addr.to_string()]);
    assert_eq!(plain.received().len(), 1);

    // TLS inside the tunnel, to a name the proxy resolves (the certificate's SAN localhost).
    let authed = TestProxy::socks5(ProxyMode::Auth("guard", "s3cret")).await;
    let address = format!("localhost:{}", tls.addr.port());
    let via = format!(
        "{UPSTREAM_TLS}      via:\n        socks5: {}\n        username: guard\n        password_file: proxy.pass\n",
        authed.addr
    );
    let (code, _) = through_guard(&dir, &address, &via).await;
    assert_eq!(code, AckCode::AA);
    assert_eq!(authed.targets(), std::slice::from_ref(&address));
    assert_eq!(tls.received().len(), 1);

    // Without credentials the same proxy offers no method we have.
    let via = format!(
        "{UPSTREAM_TLS}      via:\n        socks5: {}\n",
        authed.addr
    );
    let (code, text) = through_guard(&dir, &address, &via).await;
    assert_eq!(code, AckCode::AE);
    assert_eq!(text, "receiver unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_egress_carries_plain_and_end_to_end_tls_upstreams() {
    let dir = TestDir::new();
    std::fs::write(dir.path("proxy.pass"), "s3cret\n").unwrap();
    let plain = FakeUpstream::start(Behaviour::Ack).await;
    let tls = FakeUpstream::start_with_tls(Behaviour::Ack, Some(dir.server_tls("ehr", None))).await;

    let open = TestProxy::http(ProxyMode::Open).await;
    let via = format!("      via:\n        http_connect: {}\n", open.addr);
    let (code, _) = through_guard(&dir, &plain.addr.to_string(), &via).await;
    assert_eq!(code, AckCode::AA);
    assert_eq!(open.targets(), [plain.addr.to_string()]);

    let authed = TestProxy::http(ProxyMode::Auth("guard", "s3cret")).await;
    let address = format!("localhost:{}", tls.addr.port());
    let via = format!(
        "      tls:\n        ca: ca.pem\n        server_name: ehr.example.org\n      via:\n        http_connect: {}\n        username: guard\n        password_file: proxy.pass\n",
        authed.addr
    );
    let (code, _) = through_guard(&dir, &address, &via).await;
    assert_eq!(code, AckCode::AA);
    assert_eq!(authed.targets(), std::slice::from_ref(&address));
    assert_eq!(tls.received().len(), 1);

    let via = format!(
        "{UPSTREAM_TLS}      via:\n        http_connect: {}\n",
        authed.addr
    );
    let (code, text) = through_guard(&dir, &address, &via).await;
    assert_eq!(code, AckCode::AE);
    assert_eq!(text, "receiver unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_proxy_gives_the_sender_an_ae_that_names_nothing_inside() {
    let dir = TestDir::new();
    let plain = FakeUpstream::start(Behaviour::Ack).await;
    let socks = TestProxy::socks5(ProxyMode::Refuse).await;
    let via = format!("      via:\n        socks5: {}\n", socks.addr);
    let (code, text) = through_guard(&dir, &plain.addr.to_string(), &via).await;
    assert_eq!(code, AckCode::AE);
    // The proxy and the receiver stay inside: the detail goes to the log, not the ack.
    assert_eq!(text, "receiver unavailable");

    let http = TestProxy::http(ProxyMode::Refuse).await;
    let via = format!("      via:\n        http_connect: {}\n", http.addr);
    let (code, text) = through_guard(&dir, &plain.addr.to_string(), &via).await;
    assert_eq!(code, AckCode::AE);
    assert_eq!(text, "receiver unavailable");

    // A proxy that is not there at all.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let via = format!("      via:\n        socks5: {gone}\n");
    let (code, text) = through_guard(&dir, &plain.addr.to_string(), &via).await;
    assert_eq!(code, AckCode::AE);
    assert_eq!(text, "receiver unavailable");
    assert!(plain.received().is_empty());
}

#[test]
fn check_reports_certificate_expiry_and_warns_within_30_days() {
    let dir = TestDir::new();
    dir.leaf_with("localhost", Usage::Server, 77, 10, "soon");
    let file = dir.path("guard.yaml");
    let listener = "      cert: soon.pem\n      key: soon.key\n      client_ca: ca.pem\n";
    let upstream = "      tls:\n        ca: ca.pem\n        cert: lab.pem\n        key: lab.key\n";
    std::fs::write(&file, config(listener, "127.0.0.1:2576", upstream)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let soon = dir.path("soon.pem").display().to_string();
    assert!(
        stdout.lines().any(|l| l.starts_with(&format!(
            "warning: route test listener certificate \"{soon}\" (CN=localhost) expires within 30 days, at "
        )) && (l.ends_with("(in 9 days)") || l.ends_with("(in 10 days)"))),
        "{stdout}"
    );
    let lab = dir.path("lab.pem").display().to_string();
    assert!(
        stdout.contains(&format!(
            "route test upstream certificate \"{lab}\" (CN=lab.example.org) expires at 2124-01-01T00:00:00Z (in "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("route test listener trusted CA ")
            && stdout.contains("(CN=test CA) expires at 2124-01-01T00:00:00Z"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("warning:").count(), 1, "{stdout}");
}

/// A sender that speaks plain MLLP to a TLS listener is told so in the log (not rustls'
/// "corrupt message of type InvalidContentType"), is never answered, and nothing is relayed; a
/// TLS client on the same listener still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_a_tls_listener_is_named_in_the_log_and_closed() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let file = dir.path("guard.yaml");
    let listener = "      cert: guard.pem\n      key: guard.key\n";
    std::fs::write(&file, config(listener, &upstream.addr.to_string(), "")).unwrap();
    let (_guard, addr, logs) = start_guard(&file);
    let addr: SocketAddr = addr.parse().unwrap();

    for first in [
        mllp_guard::wire::codec::encode(&message("PLAIN-1", 200)).to_vec(),
        message("PLAIN-2", 200),
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&first).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("the guard closes the connection");
        assert!(
            read.is_err() || answer.is_empty(),
            "a plaintext client got an answer: {answer:?}"
        );
        let line = log_line(&logs, "plaintext MLLP client");
        assert_eq!(
            line["message"],
            "a plaintext MLLP client connected to a TLS listener: connect with TLS, or remove tls: from this route",
            "{line}"
        );
        assert_eq!(line["route"], "test", "{line}");
    }

    let mut client = Client::tls(addr, dir.client_tls("ca.pem", None))
        .await
        .unwrap();
    let (code, _, _) = ack_of(&client.send(&message("TLS-1", 200)).await);
    assert_eq!(code, AckCode::AA);
    assert_eq!(
        upstream.received().len(),
        1,
        "only the TLS client's message"
    );
}
