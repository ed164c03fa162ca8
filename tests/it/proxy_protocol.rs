//! PROXY protocol through a listener (what the allowlist, limits and logs see is the client the
//! balancer names; only the balancers in `from` are believed) and to a receiver
//! (`send_proxy_protocol`).

use std::time::Duration;

use mllp_guard::net::proxy_protocol::{self, Origin, Version};
use mllp_guard::net::Stream;
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::AckCode;
use mllp_guard::wire::link::Link;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};

use crate::cli::{start_guard, start_saving_sink};
use crate::harness::*;

fn origin(source: &str) -> Origin {
    Origin {
        source: source.parse().unwrap(),
        destination: "198.51.100.1:2575".parse().unwrap(),
    }
}

/// Connects to `addr` from 127.0.0.1 as a balancer would: the header first, then MLLP.
async fn via_balancer(
    addr: std::net::SocketAddr,
    version: Version,
    client: Option<&str>,
) -> Client {
    via_balancer_at(addr, "127.0.0.1", version, client)
        .await
        .expect("a trusted balancer's connection")
}

/// Sends message `id` on `client`'s connection, which the guard must close unanswered.
async fn refused(mut client: Client, id: &str, why: &str) {
    let _ = client.link.send(&codec::encode(&message(id, 200))).await;
    assert!(client.is_closed().await, "{why}");
}

/// Like [`via_balancer`], from the address `balancer`; `Err` if the guard reset the connection
/// before the header was written (a balancer outside `from` is refused as soon as it is
/// accepted, so its connect, its options or its header's write may already see the reset).
async fn via_balancer_at(
    addr: std::net::SocketAddr,
    balancer: &str,
    version: Version,
    client: Option<&str>,
) -> std::io::Result<Client> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(balancer.parse().unwrap(), 0))?;
    let mut tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&proxy_protocol::header(version, client.map(origin)))
        .await?;
    Ok(Client {
        link: Link::new(Stream::Plain(tcp), 1 << 20),
    })
}

#[tokio::test]
async fn the_allowlist_sees_the_client_the_header_names_and_the_receiver_is_told() {
    for version in [Version::V2, Version::V1] {
        let dir = TestDir::new();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let yaml = format!(
            "routes:\n  - name: lb\n    listen: 127.0.0.1:0\n    proxy_protocol: {{ accept: {version}, from: [127.0.0.1] }}\n    allow: [192.0.2.7]\n    upstream:\n      address: {}\n      send_proxy_protocol: v2\n      ack_timeout: 2s\n",
            receiver.local_addr().unwrap()
        );
        let guard = dir.guard(&yaml).await;
        let listen = guard.local_addr("lb").unwrap();

        // Admitted as 192.0.2.7 although the TCP peer is 127.0.0.1.
        let mut client = via_balancer(listen, version, Some("192.0.2.7:40000")).await;
        client
            .link
            .send(&codec::encode(&message("PP-1", 200)))
            .await
            .unwrap();
        let (mut tcp, _) = tokio::time::timeout(Duration::from_secs(5), receiver.accept())
            .await
            .unwrap()
            .unwrap();
        let told = proxy_protocol::read_header(&mut tcp, Version::V2)
            .await
            .unwrap()
            .expect("a PROXY header naming the sender");
        assert_eq!(told.source, "192.0.2.7:40000".parse().unwrap(), "{version}");
        let mut upstream = Link::new(Stream::Plain(tcp), 1 << 20);
        let Ok(Some(Decoded::Frame(frame))) = upstream.next().await else {
            panic!("the message follows the header");
        };
        assert_eq!(frame.payload(), &message("PP-1", 200)[..]);
        let ack = "MSH|^~\\&|R|F|S|F|20240101||ACK|A1|P|2.5.1\rMSA|AA|PP-1\r";
        upstream.send(&codec::encode(ack.as_bytes())).await.unwrap();
        assert_eq!(ack_of(&client.read_ack().await.unwrap()).0, AckCode::AA);

        // 192.0.2.8 is not on the list, whatever address the balancer has.
        let mut stranger = via_balancer(listen, version, Some("192.0.2.8:40000")).await;
        assert!(
            stranger.is_closed().await,
            "{version}: refused by the allowlist"
        );
        // No header at all: refused.
        let mut bare = Client::plain(listen).await;
        bare.send_raw(&codec::encode(&message("NOHDR", 200))).await;
        assert!(
            bare.is_closed().await,
            "{version}: refused without a header"
        );
        guard.stop().await;
    }
}

/// The JSON log lines read so far (bounded wait for each).
fn json_lines(logs: &std::sync::mpsc::Receiver<String>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        out.push(serde_json::from_str(&line).unwrap());
    }
    out
}

#[test]
fn check_refuses_a_bare_version_and_says_to_name_the_balancers() {
    let dir = TestDir::new();
    for (written, said) in [
        ("proxy_protocol: v1", "add `from:`"),
        (
            "proxy_protocol: { accept: v2 }",
            "missing required key `from`",
        ),
        (
            "proxy_protocol: { accept: v2, from: [any] }",
            "\"any\" would let every peer claim any address",
        ),
        (
            "proxy_protocol: { accept: v2, from: [] }",
            "`from` is empty",
        ),
        (
            "proxy_protocol: { accept: v3, from: [10.0.0.5] }",
            "must be v1 (text header), v2 (binary header) or any (either)",
        ),
    ] {
        let file = dir.path("bare.yaml");
        std::fs::write(
            &file,
            route_yaml(
                "127.0.0.1:2576".parse().unwrap(),
                &format!("    {written}\n"),
                "",
                "",
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{written}: {stderr}");
        assert!(
            stderr.contains("bare.yaml:5:"),
            "{written}: file:line:col: {stderr}"
        );
        assert!(stderr.contains(said), "{written}: {stderr}");
    }
}

/// Through the binary: a header is believed only from `from`; `accept: any` reads both versions;
/// the audit line names the client and the balancer; a stranger's header is refused before a
/// byte reaches the receiver, and the refusal is logged with the stranger's real address.
#[tokio::test]
async fn only_the_balancers_in_from_are_believed() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, sink_addr) = start_saving_sink(&saved);
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(
            sink_addr.parse().unwrap(),
            "    proxy_protocol: { accept: any, from: [127.0.0.1/32] }\n",
            "",
            "",
        )
        .replace("allow: [127.0.0.1/32]", "allow: [192.0.2.0/24]"),
    )
    .unwrap();
    let (_guard, listen, logs) = start_guard(&config);
    let listen: std::net::SocketAddr = listen.parse().unwrap();

    for (version, id) in [(Version::V1, "PB-1"), (Version::V2, "PB-2")] {
        let mut client = via_balancer(listen, version, Some("192.0.2.7:40000")).await;
        client.send_raw(&codec::encode(&message(id, 200))).await;
        let ack = client.read_ack().await.expect("an ack");
        assert_eq!(ack_of(&ack).0, AckCode::AA, "{version}");
    }
    // A header from a peer outside `from` (127.0.0.2) names an allowed client: still refused.
    match via_balancer_at(listen, "127.0.0.2", Version::V2, Some("192.0.2.7:40000")).await {
        // Reset before the header went out.
        Err(err) => assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        ),
        Ok(forger) => refused(forger, "FORGED", "a header from outside `from` is refused").await,
    }
    // Not even a direct sender in the route's allowlist gets past `from`.
    let direct = Client::plain_from(listen, "127.0.0.3".parse().unwrap()).await;
    if let Ok(direct) = direct {
        refused(
            direct,
            "DIRECT",
            "a connection without a balancer is refused",
        )
        .await;
    }

    let lines = json_lines(&logs);
    let audit: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "message" && v["direction"] == "from_sender")
        .collect();
    assert_eq!(audit.len(), 2, "{audit:?}");
    for line in &audit {
        assert_eq!(line["peer"], "192.0.2.7:40000", "{line}");
        assert!(
            line["proxy"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "the audit line names the balancer too: {line}"
        );
    }
    for stranger in ["127.0.0.2:", "127.0.0.3:"] {
        assert!(
            lines.iter().any(|v| v["message"] == "connection refused"
                && v["peer"].as_str().is_some_and(|p| p.starts_with(stranger))
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("proxy_protocol.from"))),
            "the refusal names the real peer {stranger}: {lines:?}"
        );
    }
    let got: Vec<Vec<u8>> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        got.len(),
        2,
        "only the balancer's two messages reach the receiver"
    );
    assert!(got
        .iter()
        .all(|m| !m.windows(6).any(|w| w == b"FORGED" || w == b"DIRECT")));
}
