//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): reading the header a load
//! balancer puts before a connection's first byte, so policy and logs see the real client, and
//! writing one to a receiver that wants it.
//!
//! Owns reading exactly the header and not one byte more (what follows belongs to the MLLP or
//! TLS stream), the version check (one version, or either), and building v1/v2 headers. Whom to
//! believe is the listener's decision (`proxy_protocol.from`), made before this reads a byte. Parsing is the `ppp` crate's.
//! Must not know what the addresses are used for.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The start of a connection as the header reader needs it: reads, and a look at what has
/// arrived without taking it (a v1 header's end is found before any byte after it is read).
/// A `TcpStream` in the guard; a replay of bytes in the fuzz target.
pub trait Arriving: AsyncRead + Unpin {
    /// Copies what has arrived (at least one byte, waiting for it; 0 at end of stream) into
    /// `buf` without consuming it.
    fn peek_arrived(
        &mut self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>>;
}

impl Arriving for TcpStream {
    async fn peek_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.peek(buf).await
    }
}

/// A PROXY protocol version (`v1` text, `v2` binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Which headers a listener reads (`proxy_protocol.accept`): one version, or either (told
/// apart by the first byte: `P` starts v1, CR starts v2's signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    Any,
}

impl From<Version> for Accept {
    fn from(version: Version) -> Accept {
        match version {
            Version::V1 => Accept::V1,
            Version::V2 => Accept::V2,
        }
    }
}

impl Accept {
    /// The versions it reads, for a message: `v1`, `v2`, `v1 or v2`.
    fn versions(self) -> &'static str {
        match self {
            Accept::V1 => "v1",
            Accept::V2 => "v2",
            Accept::Any => "v1 or v2",
        }
    }
}

impl std::fmt::Display for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accept::V1 => "v1",
            Accept::V2 => "v2",
            Accept::Any => "any",
        })
    }
}

/// Where a proxied connection really comes from and goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] io::Error),
    #[error("no PROXY protocol {} header at the start of the connection", .0.versions())]
    Missing(Accept),
    #[error("malformed PROXY protocol {version} header: {reason}")]
    Malformed { version: Version, reason: String },
}

/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Reads a header of an accepted version from the start of `tcp`, consuming exactly its bytes.
/// `Ok(None)` for a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`, e.g. a balancer's
/// health check): the connection's own addresses then apply.
pub async fn read_header<S: Arriving>(
    tcp: &mut S,
    accept: impl Into<Accept>,
) -> Result<Option<Origin>, ProxyError> {
    match accept.into() {
        Accept::V1 => read_v1(tcp).await,
        Accept::V2 => read_v2(tcp).await,
        Accept::Any => {
            let mut first = [0u8; 1];
            match tcp.peek_arrived(&mut first).await? {
                0 => Err(ProxyError::Missing(Accept::Any)),
                _ if first[0] == b'P' => read_v1(tcp).await,
                _ if first[0] == V2_SIGNATURE[0] => read_v2(tcp).await,
                _ => Err(ProxyError::Missing(Accept::Any)),
            }
        }
    }
}

async fn read_v1<S: Arriving>(tcp: &mut S) -> Result<Option<Origin>, ProxyError> {
    let mut header = Vec::with_capacity(V1_MAX);
    let mut peeked = [0u8; V1_MAX];
    loop {
        let room = V1_MAX - header.len();
        let n = tcp.peek_arrived(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(ProxyError::Missing(Accept::V1));
        }
        let seen = &peeked[..n];
        // Everything up to CRLF is header; without CRLF yet, all of it is.
        // A CRLF split between two arrivals ends the header before any CRLF further on (found
        // by the fuzz target: checked second, a later CRLF took bytes past the header).
        let take = if header.last() == Some(&b'\r') && seen[0] == b'\n' {
            1
        } else {
            match seen.windows(2).position(|w| w == b"\r\n") {
                Some(at) => at + 2,
                None => n,
            }
        };
        let start = header.len();
        header.resize(start + take, 0);
        tcp.read_exact(&mut header[start..]).await?;
        if !b"PROXY ".starts_with(&header[..header.len().min(6)]) {
            return Err(ProxyError::Missing(Accept::V1));
        }
        if header.ends_with(b"\r\n") {
            break;
        }
        if header.len() >= V1_MAX {
            return Err(malformed(Version::V1, "longer than 107 bytes without CRLF"));
        }
    }
    // The spec's header is US-ASCII with one CR, the one ending it. Checked here: `ppp` slices
    // at the first CR plus two bytes, which panics inside a multi-byte character (the fuzz
    // target found `...\r\xd0\xbf...`).
    let body = &header[..header.len() - 2];
    if !header.is_ascii() || body.contains(&b'\r') {
        return Err(malformed(
            Version::V1,
            "not one line of ASCII text ending in CRLF",
        ));
    }
    let text =
        std::str::from_utf8(&header).map_err(|_| malformed(Version::V1, "not ASCII text"))?;
    let parsed =
        ppp::v1::Header::try_from(text).map_err(|e| malformed(Version::V1, &e.to_string()))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Unknown => None,
        ppp::v1::Addresses::Tcp4(a) => Some(Origin {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
        ppp::v1::Addresses::Tcp6(a) => Some(Origin {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
    })
}

async fn read_v2<S: Arriving>(tcp: &mut S) -> Result<Option<Origin>, ProxyError> {
    let mut fixed = [0u8; 16];
    let mut got = 0;
    // Check the signature on what has arrived before committing to read 16 bytes, so a
    // plaintext MLLP sender without a header is refused at once rather than after a timeout.
    while got < 16 {
        let n = tcp.read(&mut fixed[got..got + 1]).await?;
        if n == 0 {
            return Err(ProxyError::Missing(Accept::V2));
        }
        got += 1;
        if got <= V2_SIGNATURE.len() && fixed[got - 1] != V2_SIGNATURE[got - 1] {
            return Err(ProxyError::Missing(Accept::V2));
        }
    }
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut header = fixed.to_vec();
    header.resize(16 + len, 0);
    tcp.read_exact(&mut header[16..]).await?;
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| malformed(Version::V2, &e.to_string()))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(Origin {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
        ppp::v2::Addresses::IPv6(a) => Some(Origin {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

fn malformed(version: Version, reason: &str) -> ProxyError {
    ProxyError::Malformed {
        version,
        reason: reason.to_string(),
    }
}

/// A header to send to a receiver: PROXY with `origin`, or LOCAL (v2) / UNKNOWN (v1) without
/// one. Source and destination must be the same family; when they are not, the header says
/// nothing (LOCAL / UNKNOWN) rather than something false.
pub fn header(version: Version, origin: Option<Origin>) -> Vec<u8> {
    let origin = origin.filter(|o| o.source.is_ipv4() == o.destination.is_ipv4());
    match version {
        Version::V1 => match origin {
            Some(o) => ppp::v1::Addresses::from((o.source, o.destination))
                .to_string()
                .into_bytes(),
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        Version::V2 => {
            let built = match origin {
                Some(o) => ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (o.source, o.destination),
                )
                .build(),
                None => ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Local,
                    ppp::v2::Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                )
                .build(),
            };
            // Building into a Vec cannot fail for these fixed-size address blocks.
            built.unwrap_or_default()
        }
    }
}

/// Bytes that arrive in pieces, for the fuzz target: never waits (what has not arrived yet
/// arrives when everything before it was taken), ends when all is taken.
struct Replay<'a> {
    data: &'a [u8],
    step: usize,
    arrived: usize,
    taken: usize,
}

impl Replay<'_> {
    fn arrive(&mut self) {
        if self.taken == self.arrived {
            self.arrived = (self.arrived + self.step).min(self.data.len());
        }
    }
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.arrive();
        let ready = &self.data[self.taken..self.arrived];
        let n = ready.len().min(buf.remaining());
        buf.put_slice(&ready[..n]);
        self.taken += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl Arriving for Replay<'_> {
    async fn peek_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arrive();
        let ready = &self.data[self.taken..self.arrived];
        let n = ready.len().min(buf.len());
        buf[..n].copy_from_slice(&ready[..n]);
        Ok(n)
    }
}

/// Runs a future that never waits (over a [`Replay`]) to its end.
fn run_now<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => unreachable!("a replay never waits"),
    }
}

/// Fuzz entry (the `proxy_header` target): the header reader as the listener calls it, on any
/// bytes arriving in pieces of any size (byte 0), for each accepted version (byte 1): no panic;
/// it never takes a byte past the header; nothing at all when the first byte starts neither
/// version; a v1 header it accepts is `PROXY ...` up to its CRLF, a v2 one its 16 bytes plus
/// the length they give; and an origin it returns, written again by [`header`], reads back the
/// same.
pub fn fuzz_header(data: &[u8]) {
    let [step, mode, stream @ ..] = data else {
        return;
    };
    let accept = [Accept::V1, Accept::V2, Accept::Any][usize::from(*mode % 3)];
    let mut replay = Replay {
        data: stream,
        step: 1 + usize::from(*step % 64),
        arrived: 0,
        taken: 0,
    };
    let result = run_now(read_header(&mut replay, accept));
    let taken = &stream[..replay.taken];
    let starts = |first: u8| first == b'P' || first == V2_SIGNATURE[0];
    if accept == Accept::Any && stream.first().is_none_or(|&b| !starts(b)) {
        assert!(
            taken.is_empty(),
            "bytes taken from a connection without a header"
        );
        assert!(matches!(result, Err(ProxyError::Missing(Accept::Any))));
    }
    let Ok(found) = result else { return };
    let version = if taken.starts_with(b"PROXY ") {
        assert!(taken.ends_with(b"\r\n") && taken.len() <= V1_MAX);
        assert_eq!(memchr::memmem::find(taken, b"\r\n"), Some(taken.len() - 2));
        Version::V1
    } else {
        assert!(taken.starts_with(&V2_SIGNATURE));
        assert_eq!(
            taken.len(),
            16 + usize::from(u16::from_be_bytes([taken[14], taken[15]]))
        );
        Version::V2
    };
    if let Some(origin) = found {
        if origin.source.is_ipv4() == origin.destination.is_ipv4() {
            let written = header(version, Some(origin));
            let mut again = Replay {
                data: &written,
                step: written.len(),
                arrived: 0,
                taken: 0,
            };
            let read = run_now(read_header(&mut again, version)).expect("our own header reads");
            assert_eq!(read, Some(origin));
            assert_eq!(again.taken, written.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn origin() -> Origin {
        Origin {
            source: "192.0.2.7:40000".parse().unwrap(),
            destination: "198.51.100.1:2575".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn both_versions_round_trip_and_leave_the_stream_untouched() {
        for version in [Version::V1, Version::V2] {
            let (mut client, mut server) = pair().await;
            let mut wire = header(version, Some(origin()));
            wire.extend_from_slice(b"\x0bMSH|rest");
            // Split awkwardly: the header arrives in pieces.
            for chunk in wire.chunks(5) {
                client.write_all(chunk).await.unwrap();
                client.flush().await.unwrap();
            }
            let got = read_header(&mut server, version).await.unwrap();
            assert_eq!(got, Some(origin()), "{version}");
            let mut rest = [0u8; 9];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"\x0bMSH|rest", "{version}: not one byte more");
        }
    }

    #[tokio::test]
    async fn accept_any_reads_either_version_and_refuses_neither() {
        for version in [Version::V1, Version::V2] {
            let (mut client, mut server) = pair().await;
            let mut wire = header(version, Some(origin()));
            wire.extend_from_slice(b"\x0bMSH|");
            client.write_all(&wire).await.unwrap();
            let got = read_header(&mut server, Accept::Any).await.unwrap();
            assert_eq!(got, Some(origin()), "{version}");
            let mut rest = [0u8; 5];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"\x0bMSH|", "{version}: not one byte more");
        }
        let (mut client, mut server) = pair().await;
        client.write_all(b"\x0bMSH|^~\\&|A\x1c\x0d").await.unwrap();
        let err = read_header(&mut server, Accept::Any).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no PROXY protocol v1 or v2 header at the start of the connection"
        );
    }

    #[tokio::test]
    async fn local_and_unknown_name_no_client() {
        for version in [Version::V1, Version::V2] {
            let (mut client, mut server) = pair().await;
            client.write_all(&header(version, None)).await.unwrap();
            assert_eq!(read_header(&mut server, version).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_connection_without_a_header_is_refused() {
        for version in [Version::V1, Version::V2] {
            let (mut client, mut server) = pair().await;
            client.write_all(b"\x0bMSH|^~\\&|A\x1c\x0d").await.unwrap();
            let err = read_header(&mut server, version).await.unwrap_err();
            assert!(matches!(err, ProxyError::Missing(_)), "{version}: {err}");
        }
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 nonsense\r\n").await.unwrap();
        let err = read_header(&mut server, Version::V1).await.unwrap_err();
        assert!(matches!(err, ProxyError::Malformed { .. }), "{err}");
    }

    /// The fuzz target's find: a v1 header whose CRLF is split between two arrivals, with
    /// another CRLF in the second one, ends at the split CRLF.
    #[test]
    fn a_crlf_split_between_arrivals_ends_the_header_there() {
        let stream = b"PROXY UNKNOWN\r\nMSH|x\r\n";
        let mut replay = Replay {
            data: stream,
            step: 14,
            arrived: 0,
            taken: 0,
        };
        let read = run_now(read_header(&mut replay, Version::V1)).unwrap();
        assert_eq!(read, None);
        assert_eq!(replay.taken, 15);
    }

    /// The fuzz target's second find: a v1 header with a CR and a multi-byte character before
    /// its end made the `ppp` parser panic; it is refused as malformed.
    #[test]
    fn a_v1_header_that_is_not_one_ascii_line_is_malformed_not_a_panic() {
        for stream in [
            &b"PROXY UNKNOWN\r\xd0\xbf 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xc3\xa9\r\n",
        ] {
            let mut replay = Replay {
                data: stream,
                step: stream.len(),
                arrived: 0,
                taken: 0,
            };
            let err = run_now(read_header(&mut replay, Version::V1)).unwrap_err();
            assert!(matches!(err, ProxyError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn the_fuzz_entry_holds_on_headers_in_pieces_and_on_what_is_not_one() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 2575\r\n\x0bMSH|";
        let v2 = header(Version::V2, Some(origin()));
        for step in [0u8, 1, 5, 63] {
            for mode in 0u8..3 {
                for stream in [&v1[..], &v2, b"\x0bMSH|^~\\&|", b"PROXY TCP4 junk\r\n", b""] {
                    let mut data = vec![step, mode];
                    data.extend_from_slice(stream);
                    fuzz_header(&data);
                }
            }
        }
    }
}
