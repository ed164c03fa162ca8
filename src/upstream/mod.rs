//! The upstream leg: getting a connection to the receiver (we connect, TCP or TLS; or it
//! connects in to us) and exchanging one frame for its ack.
//!
//! Owns connection set-up under a timeout, keepalive tuning, the paired-or-pooled connection
//! policy, idle reconnects, stale-connection detection before reuse, MLLP release 2 commit
//! blocks on this side, and ack verification (MSA-2 must equal the message's control id). An
//! exchange that times out closes its connection, so a late ack can never answer the next
//! message. On a two-way (paired) connection, messages the receiver sends while an ack is
//! awaited are handed to the session at once ([`crossing`]) instead of being taken for the
//! ack, and the session's answers to them are written meanwhile. Must not know about
//! downstream peers or admission policy.
//!
//! The files, in the order an exchange uses them: `connect` (the gate, TCP, proxy, TLS),
//! `receivers` (accept mode), `conn` (one connection, one round trip), `crossing` (the two-way
//! side channel), `error` (what failed and whether retrying helps); this file holds the
//! route's `Upstream`: the pool, the exchange with its one retry on a fresh connection, and
//! idle handling.

mod conn;
mod connect;
pub mod crossing;
mod error;
mod receivers;

pub use conn::{UpstreamConn, VerifiedAck};
pub use crossing::ExchangeEnd;
pub use error::UpstreamError;

/// Where a session or a drainer keeps its own upstream connection, empty until the first
/// message opens one. Boxed: an `UpstreamConn` is 288 bytes, which every idle sender connection
/// would otherwise hold inline before it sent anything (issue 22: idle memory).
pub type ConnSlot = Option<Box<UpstreamConn>>;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Connections, IdleReopen};
use crate::net::proxy_protocol::Origin;
use crate::outcome::Fault as _;
use crate::wire::codec::Frame;
use crate::wire::commit;
use crate::wire::link::Ready;
use connect::Connector;

/// A route's upstream: how to connect and, in pool mode, the shared connections.
pub struct Upstream {
    connector: Connector,
    pool: Option<Pool>,
    ack_duration: crate::ops::metrics::AckDuration,
}

struct Pool {
    size: usize,
    /// One permit per connection the pool may hold; waiting is first come, first served.
    permits: Semaphore,
    // Boxed like a [`ConnSlot`]: a connection moves between the pool and an exchange's slot
    // as a pointer, with no allocation per exchange.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<UpstreamConn>>>,
}

/// What an exchange waits for after sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaits {
    /// The accept ack answering the message (MSA-2 = its control id).
    Ack,
    /// Nothing: the message asked for no accept ack.
    Nothing,
}

/// What a paired connection is for (pooled connections ignore it).
#[derive(Default)]
pub struct PairedWith<'a> {
    /// Two-way: the caller takes the messages the receiver sends on its own, handed over
    /// during an exchange through this end.
    pub crossing: Option<&'a mut ExchangeEnd>,
    /// The sender, for the PROXY header of a new connection.
    pub origin: Option<Origin>,
}

impl Upstream {
    pub fn new(route: Arc<str>, cfg: config::UpstreamConfig) -> Upstream {
        let pool = match cfg.connections {
            Connections::Paired => None,
            Connections::Pool(n) => Some(Pool {
                size: n.get(),
                permits: Semaphore::new(n.get()),
                idle: Mutex::new(Vec::with_capacity(n.get())),
            }),
        };
        Upstream {
            ack_duration: crate::ops::metrics::AckDuration::new(&route),
            connector: Connector::new(route, cfg),
            pool,
        }
    }

    /// Where the receiver is, for logs: its address, or where we accept it.
    pub fn address(&self) -> String {
        self.cfg().role.to_string()
    }

    /// The upstream's settings.
    pub fn config(&self) -> &config::UpstreamConfig {
        self.connector.config()
    }

    fn cfg(&self) -> &config::UpstreamConfig {
        self.connector.config()
    }

    /// With `accept`: binds the address receivers connect to (before anything is served, so a
    /// port in use fails the start) and returns the listener, to be served by
    /// [`Upstream::accept_receivers`]. `None` when this upstream connects out.
    pub fn bind_accept(&self) -> io::Result<Option<TcpListener>> {
        match self.connector.accepted() {
            Some(accepted) => crate::net::bind::bind(accepted.listen).map(Some),
            None => Ok(None),
        }
    }

    /// Accepts receivers on `listener` until `stop`: each admitted connection waits in a queue
    /// until a message needs it.
    pub fn accept_receivers(
        &self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let accepted = self.connector.accepted().cloned();
        let route = self.connector.route().clone();
        let keepalive = self.cfg().keepalive;
        let socket = self.cfg().socket;
        async move {
            if let Some(accepted) = accepted {
                accepted
                    .serve(listener, stop, route, keepalive, socket)
                    .await;
            }
        }
    }

    /// Sends `frame` and waits for its ack, which must answer `control_id`.
    ///
    /// `paired` is the sending session's own connection slot (used when connections are paired;
    /// pooled routes ignore it). With `with.crossing`, the caller takes the messages the
    /// receiver sends on its own on a paired connection (handed over during the exchange, or
    /// [`UpstreamConn::next_inbound`] after it); without it (and always on pooled connections)
    /// such a frame makes the connection unusable. `with.origin`
    /// names the sender in the PROXY header of a new paired connection (`send_proxy_protocol`).
    /// On any error the connection involved is closed.
    pub async fn exchange(
        &self,
        paired: &mut ConnSlot,
        frame: &Frame,
        control_id: &[u8],
        with: PairedWith<'_>,
    ) -> Result<VerifiedAck, UpstreamError> {
        self.exchange_or_send(paired, frame, control_id, with, Awaits::Ack)
            .await?
            .ok_or(UpstreamError::ClosedBeforeAck)
    }

    /// Sends `frame` and waits for no accept ack: the message asked for none (enhanced mode,
    /// MSH-15 `NE` or `ER`). Connects as [`Upstream::exchange`] does; on a two-way connection
    /// whatever the receiver sends later is the session's to relay.
    pub async fn send_only(
        &self,
        paired: &mut ConnSlot,
        frame: &Frame,
        with: PairedWith<'_>,
    ) -> Result<(), UpstreamError> {
        self.exchange_or_send(paired, frame, b"", with, Awaits::Nothing)
            .await
            .map(|_| ())
    }

    async fn exchange_or_send(
        &self,
        paired: &mut ConnSlot,
        frame: &Frame,
        control_id: &[u8],
        with: PairedWith<'_>,
        awaits: Awaits,
    ) -> Result<Option<VerifiedAck>, UpstreamError> {
        match &self.pool {
            None => {
                self.exchange_on(paired, frame, control_id, with, awaits)
                    .await
            }
            // Boxed: a pooled exchange keeps its permit and connection across the exchange,
            // which would otherwise grow every paired session's in-flight state by ~500 bytes
            // (moved, not just held, at each await level; issue 7).
            Some(pool) => Box::pin(self.exchange_pooled(pool, frame, control_id, awaits)).await,
        }
    }

    /// [`Upstream::exchange`] on a connection borrowed from the pool.
    async fn exchange_pooled(
        &self,
        pool: &Pool,
        frame: &Frame,
        control_id: &[u8],
        awaits: Awaits,
    ) -> Result<Option<VerifiedAck>, UpstreamError> {
        let waited = self.cfg().ack_timeout;
        let _permit = match timeout(waited, pool.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; treat it like a busy pool if it ever is.
            Ok(Err(_)) | Err(_) => {
                return Err(UpstreamError::PoolBusy {
                    size: pool.size,
                    waited,
                })
            }
        };
        let mut slot = pool.idle.lock().await.pop();
        let result = self
            .exchange_on(&mut slot, frame, control_id, PairedWith::default(), awaits)
            .await;
        if let Some(conn) = slot {
            pool.idle.lock().await.push(conn);
        }
        result
    }

    async fn exchange_on(
        &self,
        slot: &mut ConnSlot,
        frame: &Frame,
        control_id: &[u8],
        mut with: PairedWith<'_>,
        awaits: Awaits,
    ) -> Result<Option<VerifiedAck>, UpstreamError> {
        let two_way = with.crossing.is_some();
        if slot
            .as_ref()
            .is_some_and(|conn| self.is_idle_too_long(conn))
        {
            if let Some(conn) = slot.take() {
                // Boxed: closing (a TLS close_notify under a timeout) is rare and would
                // otherwise be the largest state of every exchange.
                Box::pin(self.close_idle(*conn)).await;
            }
        }
        if slot
            .as_mut()
            .is_some_and(|conn| !self.still_usable(conn, two_way))
        {
            *slot = None;
        }
        loop {
            let conn = match slot {
                Some(conn) => conn,
                None => slot.insert(Box::new(self.connect_for(with.origin).await?)),
            };
            let was_fresh = std::mem::replace(&mut conn.fresh, false);
            // Sets `last_used` on success; on failure the connection is dropped below.
            let result = match awaits {
                Awaits::Ack => conn
                    .round_trip(
                        frame,
                        control_id,
                        with.crossing.as_deref_mut(),
                        self.cfg().ack_timeout,
                        &self.ack_duration,
                    )
                    .await
                    .map(Some),
                Awaits::Nothing => conn
                    .send_only(frame, self.cfg().commit_timeout())
                    .await
                    .map(|()| None),
            };
            match result {
                Ok(reply) => {
                    self.connector.healthy();
                    crate::ops::notify::upstream_answered(self.connector.route(), &self.cfg().role);
                    return Ok(reply);
                }
                Err(err) => {
                    *slot = None;
                    if let UpstreamError::AckTimeout(_) = err {
                        let route = self.connector.route();
                        crate::ops::notify::upstream_ack_timeout(
                            route,
                            &self.address(),
                            &err.to_string(),
                        );
                    }
                    if was_fresh || !err.worth_retrying_fresh() {
                        return Err(err);
                    }
                    tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, reason = err.reason(), "reused upstream connection failed before any ack; retrying once on a new one");
                }
            }
        }
    }

    /// Whether `conn` has been quiet for `idle_reconnect`.
    pub fn is_idle_too_long(&self, conn: &UpstreamConn) -> bool {
        self.cfg()
            .idle_reconnect
            .is_some_and(|idle| conn.last_used.elapsed() >= idle)
    }

    /// When `conn` will have been quiet for `idle_reconnect` (`None`: never closed for that).
    pub fn idle_deadline(&self, conn: &UpstreamConn) -> Option<Instant> {
        self.cfg().idle_reconnect.map(|idle| conn.last_used + idle)
    }

    /// Whether a new connection replaces an idle one at once (`idle_reopen: at-once`).
    pub fn reopens_at_once(&self) -> bool {
        self.cfg().idle_reconnect.is_some() && self.cfg().idle_reopen == IdleReopen::AtOnce
    }

    async fn close_idle(&self, conn: UpstreamConn) {
        if let Some(idle) = self.cfg().idle_reconnect {
            tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, idle = %humantime::format_duration(idle), "upstream connection quiet for idle_reconnect; closing it before a firewall forgets it");
        }
        conn.close().await;
    }

    /// `idle_reopen: at-once` on a paired slot: replaces a connection quiet for
    /// `idle_reconnect` with a new one now (left empty if the connect fails; the next message
    /// tries again).
    pub async fn reopen_idle(&self, slot: &mut ConnSlot) {
        if let Some(conn) = slot.take() {
            self.close_idle(*conn).await;
        }
        match self.connect().await {
            Ok(conn) => *slot = Some(Box::new(conn)),
            Err(err) => {
                tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, error = %err, "reopening an idle upstream connection failed; the next message will try again")
            }
        }
    }

    /// `idle_reopen: at-once` for a pool: every pooled connection quiet for `idle_reconnect` is
    /// replaced now. Runs until `stop`.
    pub async fn keep_pool_fresh(&self, stop: CancellationToken) {
        let (Some(pool), Some(idle)) = (&self.pool, self.cfg().idle_reconnect) else {
            return;
        };
        if !self.reopens_at_once() {
            return;
        }
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let stale: Vec<Box<UpstreamConn>> = {
                let mut conns = pool.idle.lock().await;
                let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *conns)
                    .into_iter()
                    .partition(|conn| self.is_idle_too_long(conn));
                *conns = keep;
                old
            };
            for conn in stale {
                self.close_idle(*conn).await;
                if let Ok(fresh) = self.connect().await {
                    pool.idle.lock().await.push(Box::new(fresh));
                }
            }
        }
    }

    /// Checks, without waiting and without sending, that a connection can carry a message: the
    /// peer has not closed or reset it (a receiver that closes after every ack leaves its FIN
    /// waiting), and sent nothing unasked. On a two-way connection, messages it sent are set
    /// aside for the session instead; a stray ack is dropped.
    fn still_usable(&self, conn: &mut UpstreamConn, two_way: bool) -> bool {
        if conn.generation != self.connector.generation.load(Ordering::Relaxed) {
            tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, "upstream connection opened before the operator's reconnect; using a new one");
            return false;
        }
        match conn.link.read_ready() {
            Ready::Nothing => true,
            Ready::Closed => {
                tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, "upstream connection was closed by the peer; reconnecting");
                false
            }
            Ready::Bytes(_) if !two_way => {
                tracing::debug!(route = %self.connector.route(), upstream = %self.cfg().role, "upstream sent bytes nobody asked for; using a new connection");
                false
            }
            Ready::Bytes(_) => {
                let mut inbound = Vec::new();
                while let Some(item) = conn.link.try_decode() {
                    if !commit::is_commit(&item) {
                        inbound.push(item);
                    }
                }
                conn.link.set_aside(inbound)
            }
        }
    }

    /// `health_check`: probes the receiver every `check.interval` until `stop` (a connection
    /// opened and closed, never a message), so that `/readyz` and `mllp_guard_upstream_up`
    /// follow it without waiting for a message. Logs when it goes down and when it is back.
    pub async fn health_checks(&self, check: config::HealthCheck, stop: CancellationToken) {
        let route = self.connector.route().clone();
        let mut up = true;
        loop {
            let probed = tokio::select! {
                _ = stop.cancelled() => return,
                probed = self.connector.probe(check.timeout) => probed,
            };
            crate::ops::metrics::upstream_probe(&route, probed.is_ok());
            let failure = probed.as_ref().err().map(|e| e.to_string());
            crate::ops::notify::upstream_probe(&route, &self.address(), failure.as_deref());
            match (&probed, up) {
                (Err(err), true) => {
                    tracing::warn!(route = %route, upstream = %self.address(), error = %err, "health check: the receiver does not answer; unready until it does")
                }
                (Ok(()), false) => {
                    tracing::info!(route = %route, upstream = %self.address(), "health check: the receiver answers again")
                }
                _ => {}
            }
            up = probed.is_ok();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(check.interval) => {}
            }
        }
    }

    /// The operator's reconnect: every connection opened before now is closed instead of reused
    /// (a session's paired one at its next message), the pool's idle ones at once; then the pool
    /// is refilled with as many new ones (at least one). Returns how many were closed and how
    /// many opened.
    pub async fn reconnect(&self) -> (usize, usize) {
        self.connector.generation.fetch_add(1, Ordering::Relaxed);
        let Some(pool) = &self.pool else {
            return (0, 0);
        };
        let old: Vec<Box<UpstreamConn>> = std::mem::take(&mut *pool.idle.lock().await);
        let closed = old.len();
        for conn in old {
            conn.close().await;
        }
        let mut opened = 0;
        for _ in 0..closed.max(1) {
            match self.connect().await {
                Ok(conn) => {
                    pool.idle.lock().await.push(Box::new(conn));
                    opened += 1;
                }
                Err(err) => {
                    tracing::warn!(route = %self.connector.route(), upstream = %self.cfg().role, error = %err, "reconnect: a new upstream connection could not be opened; the next message tries again");
                    break;
                }
            }
        }
        (closed, opened)
    }

    /// Opens a new connection (resolve, TCP, optional TLS) within `connect_timeout`, unless the
    /// upstream is failing and its reconnect backoff has not elapsed.
    pub async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        self.connect_for(None).await
    }

    /// Like [`Upstream::connect`]; with `send_proxy_protocol`, the PROXY header names `origin`
    /// (LOCAL / UNKNOWN when `None`).
    pub async fn connect_for(&self, origin: Option<Origin>) -> Result<UpstreamConn, UpstreamError> {
        self.connector.connect_for(origin).await
    }
}
