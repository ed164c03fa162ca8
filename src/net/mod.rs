//! Socket plumbing shared by both legs: TCP tuning (TCP_NODELAY, keepalive, the `socket:` block's
//! buffer sizes and linger) and a stream that is either plain TCP or TLS over TCP.
//!
//! Owns socket options and the plain/TLS stream type. Must not know about MLLP, HL7 or routes.

pub mod bind;
pub mod egress;
pub mod proxy_protocol;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{Keepalive, SocketOptions};

/// Sets TCP_NODELAY as configured (on by default: a frame goes out at once, in one segment where
/// it fits), the configured buffer sizes and linger, TCP keepalive with the configured time,
/// interval and probe count, and TCP_USER_TIMEOUT so a peer that vanished is noticed even while
/// data is waiting to be sent.
pub fn tune(stream: &TcpStream, keepalive: &Keepalive, options: &SocketOptions) -> io::Result<()> {
    stream.set_nodelay(options.nodelay)?;
    let sock = SockRef::from(stream);
    buffers(&sock, options)?;
    if let Some(linger) = options.linger {
        sock.set_linger(Some(linger))?;
    }
    let probes = TcpKeepalive::new()
        .with_time(keepalive.time)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    sock.set_tcp_keepalive(&probes)?;
    sock.set_tcp_user_timeout(Some(keepalive.user_timeout))
}

/// SO_SNDBUF and SO_RCVBUF when configured. The kernel caps them at `net.core.wmem_max` and
/// `rmem_max` without an error, so a cap is reported, once per process (Linux reads back
/// twice the value set, for its bookkeeping).
fn buffers(sock: &SockRef<'_>, options: &SocketOptions) -> io::Result<()> {
    static CAPPED: std::sync::Once = std::sync::Once::new();
    if let Some(size) = options.send_buffer {
        sock.set_send_buffer_size(size)?;
        let got = sock.send_buffer_size()?;
        if got < size.saturating_mul(2) {
            CAPPED.call_once(|| {
                tracing::warn!(
                    requested = size,
                    got = got / 2,
                    "socket.send_buffer was capped by the kernel (raise net.core.wmem_max)"
                )
            });
        }
    }
    if let Some(size) = options.receive_buffer {
        sock.set_recv_buffer_size(size)?;
        let got = sock.recv_buffer_size()?;
        if got < size.saturating_mul(2) {
            CAPPED.call_once(|| {
                tracing::warn!(
                    requested = size,
                    got = got / 2,
                    "socket.receive_buffer was capped by the kernel (raise net.core.rmem_max)"
                )
            });
        }
    }
    Ok(())
}

/// A connection to a peer, plain or TLS; reads and writes pass straight through.
pub enum Stream {
    Plain(TcpStream),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Every identity in the peer's certificate (SAN DNS/URI names, then CN); empty if none.
    pub fn peer_identities(&self) -> Vec<String> {
        match self {
            Stream::Plain(_) => Vec::new(),
            Stream::ClientTls(tls) => crate::tls::peer_identities(tls.get_ref().1),
            Stream::ServerTls(tls) => crate::tls::peer_identities(tls.get_ref().1),
        }
    }

    /// The negotiated TLS version and cipher suite (`None` for plaintext), for the console.
    pub fn tls_summary(&self) -> Option<(String, String)> {
        let conn: &rustls::CommonState = match self {
            Stream::Plain(_) => return None,
            Stream::ClientTls(tls) => tls.get_ref().1,
            Stream::ServerTls(tls) => tls.get_ref().1,
        };
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        })?;
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default();
        Some((version, cipher))
    }

    /// The peer's certificate chain, leaf first: `None` on a plaintext stream, empty when the
    /// TLS peer presented none.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let certs = match self {
            Stream::Plain(_) => return None,
            Stream::ClientTls(tls) => tls.get_ref().1.peer_certificates(),
            Stream::ServerTls(tls) => tls.get_ref().1.peer_certificates(),
        };
        Some(certs.map(<[_]>::to_vec).unwrap_or_default())
    }

    /// Whether the peer has already closed, reset, or sent bytes nobody asked for, checked without
    /// waiting and without sending. A connection that fails this check must not carry a message:
    /// a receiver that closes after every ack leaves its FIN waiting here.
    pub fn is_stale(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ready means EOF, an error, or unsolicited bytes (a late ack): all make the connection
        // unusable. Pending means nothing is waiting, the healthy case.
        Pin::new(self).poll_read(&mut cx, &mut buf).is_ready()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tune_sets_the_configured_socket_options_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let keepalive = Keepalive {
            time: Duration::from_secs(61),
            interval: Duration::from_secs(11),
            retries: 7,
            user_timeout: Duration::from_secs(200),
        };
        let options = SocketOptions {
            send_buffer: Some(64 << 10),
            receive_buffer: Some(32 << 10),
            linger: Some(Duration::ZERO),
            nodelay: false,
        };
        tune(&stream, &keepalive, &options).unwrap();
        let sock = SockRef::from(&stream);
        assert!(!stream.nodelay().unwrap());
        // Linux doubles the sizes for its bookkeeping.
        assert_eq!(sock.send_buffer_size().unwrap(), 128 << 10);
        assert_eq!(sock.recv_buffer_size().unwrap(), 64 << 10);
        assert_eq!(sock.linger().unwrap(), Some(Duration::ZERO));
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(61));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(11)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 7);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(200))
        );
    }
}
