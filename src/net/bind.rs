//! Sockets bound to a chosen local address. Listening sockets: SO_REUSEADDR, dual-stack off for
//! IPv6 wildcards, and IP_TRANSPARENT for transparent mode (route listeners, accept-mode
//! receivers and the admin endpoint). Outbound connections from a chosen source address
//! (`upstream.local_address`, or the sender's own with `transparent_source`).
//! Must not know what is served on them or sent over them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Binds a listening socket with SO_REUSEADDR (restarts do not wait out TIME_WAIT) and, for an
/// IPv6 wildcard, dual-stack off so `[::]` and `0.0.0.0` routes can coexist.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, false)
}

/// Like [`bind`]; `transparent` sets IP_TRANSPARENT, so connections that nftables' TPROXY
/// redirects here are accepted with their original destination as the local address (Linux;
/// needs CAP_NET_ADMIN).
pub fn bind_with(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if transparent {
        let set = if addr.is_ipv6() {
            socket.set_ip_transparent_v6(true)
        } else {
            socket.set_ip_transparent_v4(true)
        };
        set.map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "transparent: true needs CAP_NET_ADMIN (setting IP_TRANSPARENT failed: {err})"
                ),
            )
        })?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `target` from `source` (port chosen by the kernel). `transparent` sets
/// IP_TRANSPARENT first so `source` need not be ours (`transparent_source`; Linux,
/// CAP_NET_ADMIN; replies must be routed back to this host); otherwise it must be an address of
/// this host (`local_address`).
pub async fn connect_from(
    source: std::net::IpAddr,
    target: SocketAddr,
    transparent: bool,
) -> io::Result<tokio::net::TcpStream> {
    if source.is_ipv4() != target.is_ipv4() {
        return Err(io::Error::other(format!(
            "cannot connect from {source} to {target}: the address families differ"
        )));
    }
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if transparent {
        let sock = socket2::SockRef::from(&socket);
        if target.is_ipv4() {
            sock.set_ip_transparent_v4(true)?;
        } else {
            sock.set_ip_transparent_v6(true)?;
        }
    }
    socket.bind(SocketAddr::new(source, 0)).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot use {source} as the source address: {err}"),
        )
    })?;
    socket.connect(target).await
}
