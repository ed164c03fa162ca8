//! Egress proxies: opening a TCP tunnel to the upstream through a SOCKS5 (RFC 1928, with
//! optional username/password per RFC 1929) or HTTP CONNECT (optional basic auth) proxy.
//!
//! Owns the proxy handshakes and their wording: what the proxy answered and what that means.
//! Returns a plain `TcpStream` that is already connected through to the target, so whatever runs
//! over it (MLLP, or TLS end to end with the upstream's SNI and verification) is unchanged.
//!
//! Must not know TLS, MLLP, routes or retry policy: the caller ([`crate::upstream`]) decides
//! timeouts, socket options and what a failure means for the sender. The target host name is
//! sent to the proxy as a name (not resolved here), so the proxy resolves it as its network
//! sees it.
//! Passwords never reach `Debug` or logs.

use std::fmt;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::pki::Password;

/// Which protocol the proxy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `socks5: host:port`.
    Socks5,
    /// `http_connect: host:port`.
    HttpConnect,
}

/// Username and password for the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
}

/// An egress proxy (`upstream.via`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    /// DNS name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http_connect",
        };
        if self.host.contains(':') {
            write!(f, "{scheme} [{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme} {}:{}", self.host, self.port)
        }
    }
}

/// Why the proxy gave no tunnel. The text is PHI-free and names what the proxy did.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the proxy could not be resolved: {0}")]
    Resolve(io::Error),
    #[error("the proxy is unreachable: {0}")]
    Connect(io::Error),
    #[error("the connection to the proxy failed during its handshake: {0}")]
    Io(#[from] io::Error),
    #[error("the proxy does not speak {expected} (it answered {got})")]
    Protocol { expected: &'static str, got: String },
    #[error("the proxy accepts none of our authentication methods (configure username and password_file)")]
    NoAcceptableAuth,
    #[error("the proxy refused the username and password")]
    AuthRefused,
    #[error("the proxy refused the tunnel: {0}")]
    Refused(String),
    #[error("the proxy's answer is too long or malformed")]
    BadReply,
}

/// Connects to `target_host:target_port` through `proxy`; the connection to the proxy comes from
/// `local` when given (`upstream.local_address`).
pub async fn connect(
    proxy: &Proxy,
    target_host: &str,
    target_port: u16,
    local: Option<std::net::IpAddr>,
) -> Result<TcpStream, EgressError> {
    let mut stream = connect_proxy(proxy, local).await?;
    let _ = stream.set_nodelay(true);
    match proxy.kind {
        ProxyKind::Socks5 => socks5(&mut stream, proxy, target_host, target_port).await?,
        ProxyKind::HttpConnect => {
            http_connect(&mut stream, proxy, target_host, target_port).await?
        }
    }
    Ok(stream)
}

async fn connect_proxy(
    proxy: &Proxy,
    local: Option<std::net::IpAddr>,
) -> Result<TcpStream, EgressError> {
    let candidates = tokio::net::lookup_host((proxy.host.as_str(), proxy.port))
        .await
        .map_err(EgressError::Resolve)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for candidate in candidates {
        let attempt = match local {
            None => TcpStream::connect(candidate).await,
            Some(source) => super::bind::connect_from(source, candidate, false).await,
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(EgressError::Connect(last))
}

/// SOCKS5 CONNECT (RFC 1928), with username/password (RFC 1929) when configured.
async fn socks5(
    stream: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), EgressError> {
    // Greeting: version 5, the methods we offer (no auth; username/password when we have one).
    let greeting: &[u8] = if proxy.credentials.is_some() {
        &[5, 2, 0x00, 0x02]
    } else {
        &[5, 1, 0x00]
    };
    stream.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice[0] != 5 {
        return Err(EgressError::Protocol {
            expected: "SOCKS5",
            got: format!("version byte {:#04x}", choice[0]),
        });
    }
    match (choice[1], &proxy.credentials) {
        (0x00, _) => {}
        (0x02, Some(creds)) => {
            let user = creds.username.as_bytes();
            let pass = creds.password.as_str().as_bytes();
            let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
                return Err(EgressError::AuthRefused);
            };
            let mut auth = vec![1, ulen];
            auth.extend_from_slice(user);
            auth.push(plen);
            auth.extend_from_slice(pass);
            stream.write_all(&auth).await?;
            let mut status = [0u8; 2];
            stream.read_exact(&mut status).await?;
            if status[1] != 0 {
                return Err(EgressError::AuthRefused);
            }
        }
        _ => return Err(EgressError::NoAcceptableAuth),
    }
    // CONNECT request: IPv4, IPv6 or the name as written.
    let mut request = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let name = host.as_bytes();
            let len = u8::try_from(name.len()).map_err(|_| EgressError::BadReply)?;
            request.push(3);
            request.push(len);
            request.extend_from_slice(name);
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(EgressError::Protocol {
            expected: "SOCKS5",
            got: format!("version byte {:#04x}", head[0]),
        });
    }
    if head[1] != 0 {
        return Err(EgressError::Refused(socks5_reply(head[1])));
    }
    // The bound address, which we do not need.
    let skip = match head[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0])
        }
        _ => return Err(EgressError::BadReply),
    };
    let mut rest = vec![0u8; skip + 2];
    stream.read_exact(&mut rest).await?;
    Ok(())
}

/// RFC 1928 section 6 reply codes.
fn socks5_reply(code: u8) -> String {
    let text = match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by the destination",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    };
    format!("SOCKS5 reply {code} ({text})")
}

/// The longest HTTP response head accepted from the proxy.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// HTTP/1.1 CONNECT, with basic auth when configured. The response head is read byte by byte so
/// not a byte of the tunnel is consumed.
async fn http_connect(
    stream: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), EgressError> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(creds) = &proxy.credentials {
        let token = base64(format!("{}:{}", creds.username, creds.password.as_str()).as_bytes());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HTTP_HEAD {
            return Err(EgressError::BadReply);
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(EgressError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before answering CONNECT",
            )));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default().trim(),
    );
    if !version.starts_with("HTTP/1.") {
        return Err(EgressError::Protocol {
            expected: "HTTP",
            got: printable(status_line),
        });
    }
    match code {
        c if c.starts_with('2') && c.len() == 3 => Ok(()),
        "407" if proxy.credentials.is_none() => Err(EgressError::Refused(
            "HTTP 407 proxy authentication required (configure username and password_file)".into(),
        )),
        "407" => Err(EgressError::AuthRefused),
        _ => Err(EgressError::Refused(format!(
            "HTTP {} {}",
            printable(code),
            printable(reason)
        ))),
    }
}

/// At most 80 printable ASCII characters of what a proxy said.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect()
}

/// Standard base64 with padding (for the basic auth header).
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_proxy_shows_its_kind_and_address_but_never_its_password() {
        let proxy = Proxy {
            kind: ProxyKind::Socks5,
            host: "::1".into(),
            port: 1080,
            credentials: Some(Credentials {
                username: "guard".into(),
                password: Password::new("hunter2"),
            }),
        };
        assert_eq!(proxy.to_string(), "socks5 [::1]:1080");
        assert!(!format!("{proxy:?}").contains("hunter2"));
    }

    #[test]
    fn socks5_reply_codes_are_named() {
        assert_eq!(
            socks5_reply(2),
            "SOCKS5 reply 2 (connection not allowed by ruleset)"
        );
    }
}
