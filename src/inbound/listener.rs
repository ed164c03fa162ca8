//! Accepting senders: bind a route's listener, admit or refuse each connection on its peer
//! address and the connection cap, then hand it to its own task (TLS handshake under a timeout,
//! then the session), on one of the connection [`workers`] when they run.
//!
//! The accept loop only accepts and admits: nothing slow runs in it. It survives accept errors
//! (pausing when out of file descriptors instead of spinning). Must not know framing or delivery.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::display;

use crate::firewall::limits::ConnectionPermit;
use crate::inbound::{session, workers};
use crate::net::proxy_protocol::Origin;
use crate::net::{self, Stream};
use crate::ops::connections::{self, TlsInfo};
use crate::ops::refusals::{self, Refusal};
use crate::route::{Peer, RouteContext};
use crate::timing::woken::Woken;

/// Accepts until `shutdown` fires; every admitted connection runs in `tracker` with the
/// route's context as it is when the connection arrives (a reload changes it for the next).
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    shared: crate::route::SharedContext,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut ctx = shared.load_full();
    let mut capacity = Arc::new(Semaphore::new(ctx.route.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                pause_after_accept_error(&ctx.name, &err).await;
                continue;
            }
        };
        let current = shared.load_full();
        if !Arc::ptr_eq(&current, &ctx) {
            // Reloaded: a new max_connections counts from now (connections already open keep
            // their permits in the old count until they close).
            if current.route.max_connections != ctx.route.max_connections {
                capacity = Arc::new(Semaphore::new(current.route.max_connections));
            }
            ctx = current;
        }
        let Ok(permit) = capacity.clone().try_acquire_owned() else {
            crate::ops::metrics::connection_refused(&ctx.name, "max_connections");
            crate::ops::notify::connection_refused(&ctx.name, peer, "max_connections");
            if let Some(not_logged) = to_log(&ctx.name, peer) {
                tracing::warn!(route = %ctx.name, %peer, reason = "max_connections reached", max_connections = ctx.route.max_connections, not_logged, "connection refused");
            }
            refuse(tcp);
            continue;
        };
        if let Err(err) = net::tune(&tcp, &ctx.route.upstream.keepalive, &ctx.route.socket) {
            tracing::debug!(route = %ctx.name, %peer, error = %err, "could not set TCP options on the sender's connection");
        }
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        if let Some(proxies) = &ctx.route.proxy_protocol {
            // Only the balancers are believed: anyone else could claim any address.
            if !proxies.from.admits(peer.ip()) {
                crate::ops::metrics::connection_refused(&ctx.name, "untrusted_proxy");
                crate::ops::notify::connection_refused(&ctx.name, peer, "untrusted_proxy");
                if let Some(not_logged) = to_log(&ctx.name, peer) {
                    tracing::warn!(route = %ctx.name, %peer, reason = "not a trusted PROXY protocol peer (proxy_protocol.from)", not_logged, "connection refused");
                }
                refuse(tcp);
                continue;
            }
            let accept = proxies.accept;
            // The real client is only known once its header is read: admit it in its own task
            // so a slow balancer cannot stall the accept loop.
            workers::place(&tracker, tcp, peer, move |mut tcp| async move {
                let Some(origin) = read_proxy_header(&mut tcp, accept, peer, &ctx, &shutdown).await
                else {
                    return;
                };
                let Some(source) = admit(&ctx, origin.source, Some(peer)) else {
                    refuse(tcp);
                    return;
                };
                let open = count_accepted(&ctx, origin.source);
                let _permits = (permit, source, open);
                serve_connection(tcp, origin, Some(peer), ctx, shutdown).await;
            });
            continue;
        }
        let Some(source) = admit(&ctx, peer, None) else {
            refuse(tcp);
            continue;
        };
        let origin = Origin {
            source: peer,
            destination: tcp.local_addr().unwrap_or(peer),
        };
        let open = count_accepted(&ctx, peer);
        workers::place(&tracker, tcp, peer, move |tcp| {
            // Made before the task's body, so the task holds the future and the permits, not
            // also the arguments it was made from.
            let served = serve_connection(tcp, origin, None, ctx, shutdown);
            async move {
                let _permits = (permit, source, open);
                served.await;
            }
        });
    }
}

/// The allowlist and the per-source connection limits, on the client's address (`proxy`: the
/// balancer whose header named it, for the log line). `None` (logged and counted) when refused.
fn admit(
    ctx: &RouteContext,
    peer: SocketAddr,
    proxy: Option<SocketAddr>,
) -> Option<ConnectionPermit> {
    let proxy = proxy.map(display);
    if ctx.refuses_while_paused() {
        crate::ops::metrics::connection_refused(&ctx.name, "paused");
        if let Some(not_logged) = to_log(&ctx.name, peer) {
            tracing::warn!(route = %ctx.name, %peer, proxy, reason = "route paused by the operator", not_logged, "connection refused");
        }
        return None;
    }
    if !ctx.route.allow.admits(peer.ip()) {
        crate::ops::metrics::connection_refused(&ctx.name, "allowlist");
        crate::ops::notify::connection_refused(&ctx.name, peer, "allowlist");
        if let Some(not_logged) = to_log(&ctx.name, peer) {
            tracing::warn!(route = %ctx.name, %peer, proxy, reason = "address not in allow list", not_logged, "connection refused");
        }
        return None;
    }
    match ctx.limits.admit_connection(peer.ip()) {
        Ok(source) => Some(source),
        Err(refusal) => {
            crate::ops::metrics::connection_refused(&ctx.name, "source_limit");
            crate::ops::notify::connection_refused(&ctx.name, peer, "source_limit");
            if let Some(not_logged) = to_log(&ctx.name, peer) {
                tracing::warn!(route = %ctx.name, %peer, proxy, reason = %refusal, not_logged, "connection refused");
            }
            None
        }
    }
}

/// Whether to log a refused connection of `peer` (see [`refusals`]): `Some` with the count of
/// its refusals not logged since its last line (a field only when there were any).
fn to_log(route: &str, peer: SocketAddr) -> Option<Option<u64>> {
    crate::ops::recent::note(route, &peer.to_string(), None, None, "connection refused");
    match refusals::refused(route, peer.ip(), std::time::Instant::now()) {
        Refusal::Log { not_logged } => Some((not_logged > 0).then_some(not_logged)),
        Refusal::Quiet => None,
    }
}

/// Counts an admitted connection; it counts as open while the returned value lives.
fn count_accepted(ctx: &RouteContext, peer: SocketAddr) -> crate::ops::metrics::OpenConnection {
    tracing::debug!(route = %ctx.name, %peer, "connection accepted");
    crate::ops::metrics::connection_accepted(&ctx.name);
    crate::ops::notify::connection_opened(&ctx.name, peer);
    crate::ops::metrics::connection_open(&ctx.name)
}

/// Reads the balancer's PROXY header within `handshake_timeout`. A header naming no client
/// (a health check) leaves the connection's own addresses. `None` (logged, counted) when the
/// connection must be refused.
async fn read_proxy_header(
    tcp: &mut TcpStream,
    accept: net::proxy_protocol::Accept,
    balancer: SocketAddr,
    ctx: &RouteContext,
    shutdown: &CancellationToken,
) -> Option<Origin> {
    let limit = ctx.route.handshake_timeout;
    let read = tokio::time::timeout(limit, net::proxy_protocol::read_header(tcp, accept));
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => return None,
        outcome = read => outcome,
    };
    let reason = match outcome {
        Ok(Ok(Some(origin))) => return Some(origin),
        Ok(Ok(None)) => {
            return Some(Origin {
                source: balancer,
                destination: tcp.local_addr().unwrap_or(balancer),
            })
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!(
            "no PROXY header within handshake_timeout ({})",
            humantime::format_duration(limit)
        ),
    };
    crate::ops::metrics::connection_refused(&ctx.name, "proxy_protocol");
    crate::ops::notify::connection_refused(&ctx.name, balancer, "proxy_protocol");
    if let Some(not_logged) = to_log(&ctx.name, balancer) {
        tracing::warn!(route = %ctx.name, peer = %balancer, reason, not_logged, "connection refused: no valid PROXY protocol header");
    }
    let _ = socket2::SockRef::from(&*tcp).set_linger(Some(Duration::ZERO));
    None
}

/// TLS handshake (if the route has TLS) under `handshake_timeout`, then the session; the
/// future's output is the number of messages the session served (0 when the handshake failed).
/// `proxy`: the balancer whose PROXY header named `origin`.
///
/// A plain function returning the future, as [`serve_listed`] is and for the same reason: an
/// `async fn` keeps its arguments (the socket, both addresses, the route, the stop token)
/// beside what it moved them into for the connection's whole life. A plaintext connection's
/// task holds the listed session and nothing else; a TLS one's handshake and listing are boxed
/// (a second allocation per TLS connection, beside the handshake's own).
fn serve_connection(
    tcp: TcpStream,
    origin: Origin,
    proxy: Option<SocketAddr>,
    ctx: Arc<RouteContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = u64> + Send + 'static {
    if ctx.route.tls.is_none() {
        let stream = Stream::Plain(tcp);
        return Either::Left(serve_listed(
            stream,
            peer_of(origin, proxy, None),
            None,
            ctx,
            shutdown,
        ));
    }
    Either::Right(Box::pin(async move {
        let Some(tls) = &ctx.route.tls else {
            return 0;
        };
        let peer = origin.source;
        // Boxed: a handshake in progress holds a whole rustls connection (over 1 KiB). On the
        // heap it lives only while the handshake runs, instead of sizing the connection's task
        // for its whole life (issue 7: idle memory per connection).
        let Some(stream) = Box::pin(handshake(tcp, tls, &ctx, peer, proxy, &shutdown)).await else {
            return 0;
        };
        let who = peer_of(origin, proxy, Some(&stream));
        tracing::debug!(route = %ctx.name, %peer, proxy = who.proxy(), identity = who.identity(), "TLS session established");
        let tls = stream.tls_summary();
        serve_listed(stream, who, tls, ctx, shutdown).await
    }))
}

/// The sender as the session knows it: its address (and the balancer's), our address, and the
/// identities its TLS certificate names (none for plaintext).
fn peer_of(origin: Origin, proxy: Option<SocketAddr>, tls: Option<&Stream>) -> Peer {
    Peer {
        addr: origin.source,
        local: origin.destination,
        proxy,
        identities: tls.map(Stream::peer_identities).unwrap_or_default(),
    }
}

/// Lists the connection for the console while its session runs; the console can end it after
/// its message in flight (the session's own stop token) or at once (the session is dropped).
///
/// A plain function returning the future, with the session boxed, rather than an `async fn`
/// awaiting it: an async fn keeps its arguments for its whole life beside the locals it moves
/// them into, so each nested level stored the session's stream and peer again. Boxed once
/// here, the session costs what it holds: a plaintext connection's task went from 3,200 bytes
/// to 1,024 plus the session's 1,864 (`-Zprint-type-sizes`), memory every idle connection
/// holds (issue 22).
pub(crate) fn serve_listed(
    stream: Stream,
    who: Peer,
    tls: Option<(String, String)>,
    ctx: Arc<RouteContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = u64> + Send + 'static {
    let close = shutdown.child_token();
    let tls = tls.map(|(version, cipher)| TlsInfo { version, cipher });
    let listed = connections::register(
        ctx.name.clone(),
        who.addr,
        who.identity().map(str::to_string),
        tls,
        close.clone(),
    );
    let entry = listed.entry().clone();
    let (route, peer) = (ctx.name.clone(), who.addr);
    let session = Box::pin(session::serve(stream, who, ctx, close, entry.clone()));
    async move {
        let _listed = listed; // listed until the session ends, either way
                              // Polled at every wake-up of the connection's task: checked with one atomic load until
                              // the operator's "close now" wakes it (`Woken`).
        let kill = Woken::new(entry.kill.cancelled());
        tokio::select! {
            messages = session => messages,
            _ = kill => {
                crate::ops::metrics::connection_closed(&route, "operator");
                tracing::info!(route = %route, %peer, reason = "closed by the operator (now)", "connection closed");
                0
            }
        }
    }
}

/// The server side of a TLS handshake within `handshake_timeout`; `None` (logged and counted)
/// when it fails, times out, or the guard shuts down meanwhile.
async fn handshake(
    tcp: TcpStream,
    tls: &crate::config::ServerTls,
    ctx: &RouteContext,
    peer: SocketAddr,
    proxy: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> Option<Stream> {
    let proxy = proxy.map(display);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let limit = ctx.route.handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    // The opposite mistake of a TLS client on a plaintext listener: a sender speaking plain
    // MLLP here would otherwise read as rustls' "corrupt message of type InvalidContentType".
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = shutdown.cancelled() => return None,
        peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)) => peeked,
    };
    if matches!(peeked, Ok(Ok(1)))
        && crate::inbound::sniff::looks_like_plaintext_mllp(first[0], ctx.route.framing.start())
    {
        crate::ops::metrics::tls_handshake_failed(&ctx.name, "error");
        crate::ops::notify::connection_refused(&ctx.name, peer, "tls_handshake");
        tracing::warn!(route = %ctx.name, %peer, "a plaintext MLLP client connected to a TLS listener: connect with TLS, or remove tls: from this route");
        return None;
    }
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return None,
        result = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => result,
    };
    match handshake {
        Ok(Ok(stream)) => Some(Stream::ServerTls(Box::new(stream))),
        Ok(Err(err)) => {
            crate::ops::metrics::tls_handshake_failed(&ctx.name, "error");
            crate::ops::notify::connection_refused(&ctx.name, peer, "tls_handshake");
            tracing::warn!(route = %ctx.name, %peer, proxy, error = %err, "TLS handshake failed; connection closed");
            None
        }
        Err(_) => {
            crate::ops::metrics::tls_handshake_failed(&ctx.name, "timeout");
            crate::ops::notify::connection_refused(&ctx.name, peer, "tls_handshake");
            tracing::warn!(route = %ctx.name, %peer, proxy, timeout = %humantime::format_duration(limit), "TLS handshake did not finish within handshake_timeout; connection closed");
            None
        }
    }
}

/// Closes a refused connection at once, with a reset (no lingering TIME_WAIT for the refuser).
fn refuse(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}

/// Out of file descriptors (or memory): wait before accepting again instead of spinning.
/// Other errors (a peer that reset before accept) are logged and skipped.
async fn pause_after_accept_error(route: &str, err: &io::Error) {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS on Linux.
    const OUT_OF_RESOURCES: [i32; 4] = [24, 23, 12, 105];
    let exhausted = err
        .raw_os_error()
        .is_some_and(|code| OUT_OF_RESOURCES.contains(&code));
    if exhausted {
        tracing::error!(route, error = %err, "accept failed: out of resources; pausing accepts for 100ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(route, error = %err, "accept failed");
    }
}
