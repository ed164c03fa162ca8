//! Accept-mode receivers (`upstream.accept`): the receiver connects in to us and we send over
//! its connections. Owns admitting them (`upstream.allow`, a cap on how many may wait), the
//! queue of connections waiting to be used, and handing the oldest live one to an exchange.
//! Must not know frames or acks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::error::UpstreamError;
use crate::config::{Keepalive, SocketOptions};
use crate::firewall::policy::Allowlist;
use crate::net::{self, Stream};

/// Connections receivers opened to an `accept` address, waiting to be used.
pub(super) struct Accepted {
    pub(super) listen: SocketAddr,
    allow: Allowlist,
    ready: std::sync::Mutex<VecDeque<(TcpStream, SocketAddr)>>,
    arrived: Notify,
}

/// Receivers waiting in the accept queue beyond this are refused (they would only sit there).
const MAX_WAITING_RECEIVERS: usize = 64;

impl Accepted {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(TcpStream, SocketAddr)>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn new(listen: SocketAddr, allow: Allowlist) -> Accepted {
        Accepted {
            listen,
            allow,
            ready: std::sync::Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
        }
    }

    /// Accepts receivers on `listener` until `stop`: each admitted connection waits in the
    /// queue until a message needs it.
    pub(super) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        route: Arc<str>,
        keepalive: Keepalive,
        socket: SocketOptions,
    ) {
        let accepted = self;
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                result = listener.accept() => match result {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::debug!(route = %route, error = %err, "accepting a receiver failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !accepted.allow.admits(peer.ip()) {
                tracing::warn!(route = %route, %peer, reason = "address not in upstream.allow", "receiver connection refused");
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                continue;
            }
            let mut ready = accepted.lock();
            // Drop receivers that left while waiting; refuse beyond the cap.
            ready.retain_mut(|(waiting, _)| !closed_while_waiting(waiting));
            if ready.len() >= MAX_WAITING_RECEIVERS {
                drop(ready);
                tracing::warn!(route = %route, %peer, waiting = MAX_WAITING_RECEIVERS, "receiver connection refused: too many unused receiver connections waiting");
                continue;
            }
            if let Err(err) = net::tune(&tcp, &keepalive, &socket) {
                tracing::debug!(route = %route, %peer, error = %err, "could not set TCP options on the receiver's connection");
            }
            tracing::info!(route = %route, %peer, "receiver connected in");
            ready.push_back((tcp, peer));
            drop(ready);
            accepted.arrived.notify_one();
        }
    }

    /// The oldest receiver connection still open, waiting up to `waited` for one to connect in.
    pub(super) async fn wait(
        &self,
        waited: Duration,
        route: &str,
    ) -> Result<Stream, UpstreamError> {
        let accepted = self;
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let arrived = accepted.arrived.notified();
            loop {
                let next = accepted.lock().pop_front();
                let Some((mut tcp, peer)) = next else { break };
                if closed_while_waiting(&mut tcp) {
                    tracing::debug!(route = %route, %peer, "a waiting receiver connection was closed; skipping it");
                    continue;
                }
                tracing::debug!(route = %route, %peer, "using a receiver connection");
                return Ok(Stream::Plain(tcp));
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(UpstreamError::NoReceiver {
                    listen: accepted.listen,
                    waited,
                });
            }
        }
    }
}

/// Whether a receiver connection waiting to be used has been closed or reset, checked without
/// waiting and without consuming anything it sent.
fn closed_while_waiting(tcp: &mut TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut probe);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match tcp.poll_peek(&mut cx, &mut buf) {
        std::task::Poll::Pending => false,
        std::task::Poll::Ready(Ok(n)) => n == 0,
        std::task::Poll::Ready(Err(_)) => true,
    }
}
