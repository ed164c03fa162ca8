//! The `dial` role on the sender side: the sender is itself an MLLP server, so the guard keeps
//! one connection open to it and serves that connection as a session, reconnecting with the
//! route's `reconnect` backoff whenever it fails or ends.
//!
//! Owns the connect/serve/wait loop and when the backoff resets (after a healthy session). Must
//! not know framing or delivery: the session does the rest, exactly as for an accepted sender.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamAddress;
use crate::net::{self, Stream};
use crate::route::{Peer, RouteContext};
use crate::timing::backoff::Backoff;

/// A session that lasted this long, or carried a message, counts as healthy: the next
/// reconnect starts again from `reconnect.initial`.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Dials `target` and serves it until `shutdown`, each connection with the route's context as
/// it is when the connection opens.
pub async fn dial_loop(
    target: UpstreamAddress,
    shared: crate::route::SharedContext,
    shutdown: CancellationToken,
) {
    let reconnect = shared.load().route.upstream.reconnect;
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    loop {
        let ctx: Arc<RouteContext> = shared.load_full();
        let wait = match connect(&target, &ctx).await {
            Ok((tcp, addr)) => {
                tracing::info!(route = %ctx.name, sender = %target, peer = %addr, "connected to the sender");
                let who = Peer {
                    addr,
                    local: tcp.local_addr().unwrap_or(addr),
                    proxy: None,
                    identities: Vec::new(),
                };
                let started = Instant::now();
                let served = crate::inbound::listener::serve_listed(
                    Stream::Plain(tcp),
                    who,
                    None,
                    ctx.clone(),
                    shutdown.clone(),
                );
                let messages = served.await;
                if messages > 0 || started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                backoff.next_wait()
            }
            Err(err) => {
                let wait = backoff.next_wait();
                tracing::warn!(route = %ctx.name, sender = %target, error = %err, retry_in_ms = wait.as_millis() as u64, "cannot connect to the sender");
                wait
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Resolves and connects to the sender within the upstream's `connect_timeout`.
async fn connect(
    target: &UpstreamAddress,
    ctx: &RouteContext,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    let limit = ctx.route.upstream.connect_timeout;
    let attempt = async {
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolved to no address",
        );
        for candidate in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
            match TcpStream::connect(candidate).await {
                Ok(tcp) => return Ok((tcp, candidate)),
                Err(err) => last = err,
            }
        }
        Err(last)
    };
    let (tcp, addr) = tokio::time::timeout(limit, attempt).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {}", humantime::format_duration(limit)),
        )
    })??;
    if let Err(err) = net::tune(&tcp, &ctx.route.upstream.keepalive, &ctx.route.socket) {
        tracing::debug!(route = %ctx.name, error = %err, "could not set TCP options on the sender connection");
    }
    Ok((tcp, addr))
}
