//! PROXY protocol through a listener (what the allowlist, limits and logs see is the client the
//! balancer names) and to a receiver (`send_proxy_protocol`).

use std::time::Duration;

use mllp_guard::net::proxy_protocol::{self, Origin, Version};
use mllp_guard::net::Stream;
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::AckCode;
use mllp_guard::wire::link::Link;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

fn origin(source: &str) -> Origin {
    Origin {
        source: source.parse().unwrap(),
        destination: "198.51.100.1:2575".parse().unwrap(),
    }
}

/// Connects to `addr` as a balancer would: the header first, then MLLP.
async fn via_balancer(
    addr: std::net::SocketAddr,
    version: Version,
    client: Option<&str>,
) -> Client {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(&proxy_protocol::header(version, client.map(origin)))
        .await
        .unwrap();
    Client {
        link: Link::new(Stream::Plain(tcp), 1 << 20),
    }
}

#[tokio::test]
async fn the_allowlist_sees_the_client_the_header_names_and_the_receiver_is_told() {
    for version in [Version::V2, Version::V1] {
        let dir = TestDir::new();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let yaml = format!(
            "routes:\n  - name: lb\n    listen: 127.0.0.1:0\n    proxy_protocol: {version}\n    allow: [192.0.2.7]\n    upstream:\n      address: {}\n      send_proxy_protocol: v2\n      ack_timeout: 2s\n",
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
