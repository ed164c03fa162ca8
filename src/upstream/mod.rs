//! The upstream leg: getting a connection to the receiver (we connect, TCP or TLS; or it
//! connects in to us) and exchanging one frame for its ack.
//!
//! Owns connection set-up under a timeout, keepalive tuning, the paired-or-pooled connection
//! policy, idle reconnects, stale-connection detection before reuse, MLLP release 2 commit
//! blocks on this side, and ack verification (MSA-2 must equal the message's control id). An
//! exchange that times out closes its connection, so a late ack can never answer the next
//! message. On a two-way (paired) connection, messages the receiver sends while an ack is
//! awaited are set aside for the session instead of being taken for the ack. Must not know
//! about downstream peers or admission policy.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Connections, IdleReopen, MllpRelease, ReceiverRole};
use crate::firewall::policy::Allowlist;
use crate::net::{self, Stream};
use crate::timing::backoff::Backoff;
use crate::timing::deadline_timer::DeadlineTimer;
use crate::wire::ack::{self, AckMismatch};
use crate::wire::codec::{Decoded, Frame};
use crate::wire::commit::{self, Commit, CommitError};
use crate::wire::hl7::{AckCode, AckError};
use crate::wire::link::{Link, Ready, MAX_SET_ASIDE};

/// Why an exchange with the upstream failed. The text is PHI-free: it becomes MSA-3 of the
/// negative ack the sender receives.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr} could not be resolved: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("upstream {addr} is unreachable: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("no connection to upstream {addr} within {}", humantime::format_duration(*.timeout))]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("egress proxy ({proxy}) gave no tunnel to upstream {addr}: {reason}")]
    Proxy {
        proxy: String,
        addr: String,
        reason: crate::net::egress::EgressError,
    },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Handshake { addr: String, source: io::Error },
    #[error("sending to the upstream failed: {0}")]
    Send(io::Error),
    #[error("reading the upstream's ack failed: {0}")]
    Receive(io::Error),
    #[error("the upstream closed the connection without acking")]
    ClosedBeforeAck,
    #[error("no ack from the upstream within {}", humantime::format_duration(*.0))]
    AckTimeout(Duration),
    #[error("the upstream's reply exceeds max_ack_bytes ({0} bytes)")]
    AckOversize(u64),
    #[error("the upstream's ack does not match: {0}")]
    AckMismatch(AckMismatch),
    #[error("all {size} upstream connections stayed busy for {}", humantime::format_duration(*.waited))]
    PoolBusy { size: usize, waited: Duration },
    #[error("upstream {addr} is unreachable (last attempt: {last}); next attempt in {}", humantime::format_duration(*.retry_in))]
    Backoff {
        addr: String,
        retry_in: Duration,
        last: String,
    },
    #[error("no receiver connected in to {listen} within {}", humantime::format_duration(*.waited))]
    NoReceiver {
        listen: SocketAddr,
        waited: Duration,
    },
    #[error("the upstream did not commit the message (MLLP release 2): {0}")]
    NotCommitted(CommitError),
    #[error("the upstream sent too many messages while an ack was awaited")]
    Flooded,
}

impl UpstreamError {
    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Resolve { .. } => "resolve",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Proxy { .. } => "proxy",
            UpstreamError::Handshake { .. } => "tls_handshake",
            UpstreamError::Send(_) => "send",
            UpstreamError::Receive(_) => "receive",
            UpstreamError::ClosedBeforeAck => "closed_before_ack",
            UpstreamError::AckTimeout(_) => "ack_timeout",
            UpstreamError::AckOversize(_) => "ack_oversize",
            UpstreamError::AckMismatch(_) => "ack_mismatch",
            UpstreamError::PoolBusy { .. } => "pool_busy",
            UpstreamError::Backoff { .. } => "reconnect_backoff",
            UpstreamError::NoReceiver { .. } => "no_receiver",
            UpstreamError::NotCommitted(_) => "not_committed",
            UpstreamError::Flooded => "flooded",
        }
    }

    /// A failure that retrying soon cannot fix: the peer's certificate does not verify, or it
    /// refuses our TLS version or ciphers. Reconnects then wait the maximum backoff.
    pub fn is_permanent(&self) -> bool {
        let UpstreamError::Handshake { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::PeerIncompatible(_)
                        | rustls::Error::AlertReceived(_)
                        | rustls::Error::NoCertificatesPresented
                )
            })
    }

    /// True when the message certainly or possibly never reached the receiver intact and the
    /// connection was reused: worth one more try on a fresh connection.
    fn worth_retrying_fresh(&self) -> bool {
        matches!(
            self,
            UpstreamError::Send(_)
                | UpstreamError::ClosedBeforeAck
                | UpstreamError::Receive(_)
                | UpstreamError::NotCommitted(CommitError::Send(_) | CommitError::Closed)
        )
    }
}

/// The upstream's verified ack, ready to relay unchanged.
#[derive(Debug)]
pub struct VerifiedAck {
    pub code: AckCode,
    /// The ack's payload, byte for byte what the upstream sent (framing removed).
    pub ack: Bytes,
}

/// One open connection to the upstream.
pub struct UpstreamConn {
    link: Link<Stream>,
    /// Whether it has carried no exchange yet (a failure on it is not worth retrying).
    fresh: bool,
    /// When it last carried traffic (for `idle_reconnect`).
    last_used: Instant,
    /// The release this side speaks.
    release: MllpRelease,
    /// The ack timeout's timer, kept from one exchange to the next.
    ack_timer: DeadlineTimer,
}

impl UpstreamConn {
    /// The next message the receiver sent on its own (set aside during an exchange, or
    /// already buffered), without reading. Commit blocks nobody waits for are skipped.
    pub fn next_inbound(&mut self) -> Option<Decoded> {
        loop {
            let item = self
                .link
                .take_set_aside()
                .or_else(|| self.link.try_decode())?;
            if !commit::is_commit(&item) {
                return Some(item);
            }
        }
    }

    /// Waits for more bytes from the receiver (cancel-safe); 0 means it closed.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        let n = self.link.read_more().await?;
        if n > 0 {
            self.last_used = Instant::now();
        }
        Ok(n)
    }

    /// Whether a frame from the receiver has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.link.in_frame()
    }

    /// When this connection last carried traffic.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Answers a message the receiver sent: a commit block first when this side speaks
    /// release 2 (ACK when `committed`, NAK otherwise, and then nothing more), then the ack
    /// payload (waiting for its commit under release 2).
    pub async fn answer_inbound(
        &mut self,
        committed: bool,
        ack: &[u8],
        per_attempt: Duration,
    ) -> Result<(), UpstreamError> {
        self.last_used = Instant::now();
        if self.release == MllpRelease::One {
            return self
                .link
                .send_payload(ack)
                .await
                .map_err(UpstreamError::Send);
        }
        let commit = if committed { Commit::Ack } else { Commit::Nak };
        commit::answer(&mut self.link, commit)
            .await
            .map_err(UpstreamError::Send)?;
        if !committed {
            return Ok(());
        }
        let mut held = Vec::new();
        let result =
            commit::send_committed(&mut self.link, ack, per_attempt, &mut held, MAX_SET_ASIDE)
                .await
                .map_err(UpstreamError::NotCommitted);
        if !self.link.set_aside(held) {
            return Err(UpstreamError::Flooded);
        }
        result
    }

    /// Closes the connection cleanly (bounded: a stuck TLS close does not hold the caller).
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(1), self.link.shutdown()).await;
    }
}

/// What a paired connection is for (pooled connections ignore it).
#[derive(Clone, Copy, Debug, Default)]
pub struct PairedWith {
    /// The caller takes messages the receiver sends on its own.
    pub two_way: bool,
    /// The sender, for the PROXY header of a new connection.
    pub origin: Option<crate::net::proxy_protocol::Origin>,
}

/// Connections receivers opened to an `accept` address, waiting to be used.
struct Accepted {
    listen: SocketAddr,
    allow: Allowlist,
    ready: std::sync::Mutex<VecDeque<(TcpStream, SocketAddr)>>,
    arrived: Notify,
}

impl Accepted {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(TcpStream, SocketAddr)>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Receivers waiting in the accept queue beyond this are refused (they would only sit there).
const MAX_WAITING_RECEIVERS: usize = 64;

/// Connects to `target` from `source`, an address that need not be ours (IP_TRANSPARENT; Linux,
/// CAP_NET_ADMIN; replies must be routed back to this host).
async fn connect_from(source: std::net::IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
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
    let sock = socket2::SockRef::from(&socket);
    if target.is_ipv4() {
        sock.set_ip_transparent_v4(true)?;
    } else {
        sock.set_ip_transparent_v6(true)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
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

/// Paces connection attempts after failures: while the upstream is failing, at most one
/// attempt is in flight, and the next waits out a jittered, growing backoff. A successful
/// exchange resets it.
struct ConnectGate {
    state: std::sync::Mutex<GateState>,
}

struct GateState {
    backoff: Backoff,
    failing: bool,
    /// Tokio's clock, so tests can run the backoff on paused time.
    next_attempt: Option<tokio::time::Instant>,
    in_flight: bool,
    last_error: String,
    /// Since when exchanges have succeeded without a connect failure.
    healthy_since: Option<tokio::time::Instant>,
}

/// The backoff starts again from `reconnect.initial` only after the upstream has been healthy
/// this long: a receiver that accepts one message and falls over again is not hammered.
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

impl ConnectGate {
    fn new(reconnect: &config::Reconnect) -> ConnectGate {
        ConnectGate {
            state: std::sync::Mutex::new(GateState {
                backoff: Backoff::new(reconnect.initial, reconnect.max),
                failing: false,
                next_attempt: None,
                in_flight: false,
                last_error: String::new(),
                healthy_since: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ok to try now, or how long until the next attempt.
    fn admit(&self, addr: &str) -> Result<(), UpstreamError> {
        let mut state = self.lock();
        if !state.failing {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let wait = state
            .next_attempt
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        if state.in_flight || !wait.is_zero() {
            return Err(UpstreamError::Backoff {
                addr: addr.to_string(),
                retry_in: wait,
                last: state.last_error.clone(),
            });
        }
        state.in_flight = true;
        Ok(())
    }

    /// Records a failed attempt; returns the wait before the next one.
    fn failed(&self, err: &UpstreamError) -> Duration {
        let mut state = self.lock();
        let now = tokio::time::Instant::now();
        if state
            .healthy_since
            .take()
            .is_some_and(|since| now.duration_since(since) >= HEALTHY_PERIOD)
        {
            state.backoff.reset();
        }
        let wait = if err.is_permanent() {
            state.backoff.longest_wait()
        } else {
            state.backoff.next_wait()
        };
        state.failing = true;
        state.in_flight = false;
        state.next_attempt = Some(now + wait);
        state.last_error = err.to_string();
        wait
    }

    fn connected(&self) {
        self.lock().in_flight = false;
    }

    /// An exchange succeeded: connections may be opened freely again; the backoff level is
    /// kept until the upstream has stayed healthy for [`HEALTHY_PERIOD`].
    fn healthy(&self) {
        let mut state = self.lock();
        state.failing = false;
        state.next_attempt = None;
        state
            .healthy_since
            .get_or_insert_with(tokio::time::Instant::now);
    }
}

/// A route's upstream: how to connect and, in pool mode, the shared connections.
pub struct Upstream {
    route: Arc<str>,
    cfg: config::UpstreamConfig,
    pool: Option<Pool>,
    gate: ConnectGate,
    /// With `accept`: the connections receivers opened to us.
    accepted: Option<Arc<Accepted>>,
    ack_duration: crate::ops::metrics::AckDuration,
}

struct Pool {
    size: usize,
    /// One permit per connection the pool may hold; waiting is first come, first served.
    permits: Semaphore,
    idle: Mutex<Vec<UpstreamConn>>,
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
        let gate = ConnectGate::new(&cfg.reconnect);
        let accepted = match &cfg.role {
            ReceiverRole::Connect(_) | ReceiverRole::OriginalDestination => None,
            ReceiverRole::Accept { listen, allow } => Some(Arc::new(Accepted {
                listen: *listen,
                allow: allow.clone(),
                ready: std::sync::Mutex::new(VecDeque::new()),
                arrived: Notify::new(),
            })),
        };
        Upstream {
            ack_duration: crate::ops::metrics::AckDuration::new(&route),
            route,
            cfg,
            pool,
            gate,
            accepted,
        }
    }

    /// Where the receiver is, for logs: its address, or where we accept it.
    pub fn address(&self) -> String {
        self.cfg.role.to_string()
    }

    /// The upstream's settings.
    pub fn config(&self) -> &config::UpstreamConfig {
        &self.cfg
    }

    /// With `accept`: binds the address receivers connect to (before anything is served, so a
    /// port in use fails the start) and returns the listener, to be served by
    /// [`Upstream::accept_receivers`]. `None` when this upstream connects out.
    pub fn bind_accept(&self) -> io::Result<Option<TcpListener>> {
        match &self.accepted {
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
        let accepted = self.accepted.clone();
        let route = self.route.clone();
        let keepalive = self.cfg.keepalive;
        async move {
            let Some(accepted) = accepted else { return };
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
                if let Err(err) = net::tune(&tcp, &keepalive) {
                    tracing::debug!(route = %route, %peer, error = %err, "could not set TCP options on the receiver's connection");
                }
                tracing::info!(route = %route, %peer, "receiver connected in");
                ready.push_back((tcp, peer));
                drop(ready);
                accepted.arrived.notify_one();
            }
        }
    }

    /// Sends `frame` and waits for its ack, which must answer `control_id`.
    ///
    /// `paired` is the sending session's own connection slot (used when connections are paired;
    /// pooled routes ignore it). With `two_way`, the caller takes the messages the receiver
    /// sends on its own on a paired connection ([`UpstreamConn::next_inbound`]); without it (and
    /// always on pooled connections) such a frame makes the connection unusable. `with.origin`
    /// names the sender in the PROXY header of a new paired connection (`send_proxy_protocol`).
    /// On any error the connection involved is closed.
    pub async fn exchange(
        &self,
        paired: &mut Option<UpstreamConn>,
        frame: &Frame,
        control_id: &[u8],
        with: PairedWith,
    ) -> Result<VerifiedAck, UpstreamError> {
        match &self.pool {
            None => self.exchange_on(paired, frame, control_id, with).await,
            // Boxed: a pooled exchange keeps its permit and connection across the exchange,
            // which would otherwise grow every paired session's in-flight state by ~500 bytes
            // (moved, not just held, at each await level; issue 7).
            Some(pool) => Box::pin(self.exchange_pooled(pool, frame, control_id)).await,
        }
    }

    /// [`Upstream::exchange`] on a connection borrowed from the pool.
    async fn exchange_pooled(
        &self,
        pool: &Pool,
        frame: &Frame,
        control_id: &[u8],
    ) -> Result<VerifiedAck, UpstreamError> {
        let waited = self.cfg.ack_timeout;
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
            .exchange_on(&mut slot, frame, control_id, PairedWith::default())
            .await;
        if let Some(conn) = slot {
            pool.idle.lock().await.push(conn);
        }
        result
    }

    async fn exchange_on(
        &self,
        slot: &mut Option<UpstreamConn>,
        frame: &Frame,
        control_id: &[u8],
        with: PairedWith,
    ) -> Result<VerifiedAck, UpstreamError> {
        let two_way = with.two_way;
        if slot
            .as_ref()
            .is_some_and(|conn| self.is_idle_too_long(conn))
        {
            if let Some(conn) = slot.take() {
                // Boxed: closing (a TLS close_notify under a timeout) is rare and would
                // otherwise be the largest state of every exchange.
                Box::pin(self.close_idle(conn)).await;
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
                None => slot.insert(self.connect_for(with.origin).await?),
            };
            let was_fresh = std::mem::replace(&mut conn.fresh, false);
            // Sets `last_used` on success; on failure the connection is dropped below.
            let result = self.round_trip(conn, frame, control_id, two_way).await;
            match result {
                Ok(reply) => {
                    self.gate.healthy();
                    return Ok(reply);
                }
                Err(err) => {
                    *slot = None;
                    if was_fresh || !err.worth_retrying_fresh() {
                        return Err(err);
                    }
                    tracing::debug!(route = %self.route, upstream = %self.cfg.role, reason = err.reason(), "reused upstream connection failed before any ack; retrying once on a new one");
                }
            }
        }
    }

    /// Whether `conn` has been quiet for `idle_reconnect`.
    pub fn is_idle_too_long(&self, conn: &UpstreamConn) -> bool {
        self.cfg
            .idle_reconnect
            .is_some_and(|idle| conn.last_used.elapsed() >= idle)
    }

    /// When `conn` will have been quiet for `idle_reconnect` (`None`: never closed for that).
    pub fn idle_deadline(&self, conn: &UpstreamConn) -> Option<Instant> {
        self.cfg.idle_reconnect.map(|idle| conn.last_used + idle)
    }

    /// Whether a new connection replaces an idle one at once (`idle_reopen: at-once`).
    pub fn reopens_at_once(&self) -> bool {
        self.cfg.idle_reconnect.is_some() && self.cfg.idle_reopen == IdleReopen::AtOnce
    }

    async fn close_idle(&self, conn: UpstreamConn) {
        if let Some(idle) = self.cfg.idle_reconnect {
            tracing::debug!(route = %self.route, upstream = %self.cfg.role, idle = %humantime::format_duration(idle), "upstream connection quiet for idle_reconnect; closing it before a firewall forgets it");
        }
        conn.close().await;
    }

    /// `idle_reopen: at-once` on a paired slot: replaces a connection quiet for
    /// `idle_reconnect` with a new one now (left empty if the connect fails; the next message
    /// tries again).
    pub async fn reopen_idle(&self, slot: &mut Option<UpstreamConn>) {
        if let Some(conn) = slot.take() {
            self.close_idle(conn).await;
        }
        match self.connect().await {
            Ok(conn) => *slot = Some(conn),
            Err(err) => {
                tracing::debug!(route = %self.route, upstream = %self.cfg.role, error = %err, "reopening an idle upstream connection failed; the next message will try again")
            }
        }
    }

    /// `idle_reopen: at-once` for a pool: every pooled connection quiet for `idle_reconnect` is
    /// replaced now. Runs until `stop`.
    pub async fn keep_pool_fresh(&self, stop: CancellationToken) {
        let (Some(pool), Some(idle)) = (&self.pool, self.cfg.idle_reconnect) else {
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
            let stale: Vec<UpstreamConn> = {
                let mut conns = pool.idle.lock().await;
                let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *conns)
                    .into_iter()
                    .partition(|conn| self.is_idle_too_long(conn));
                *conns = keep;
                old
            };
            for conn in stale {
                self.close_idle(conn).await;
                if let Ok(fresh) = self.connect().await {
                    pool.idle.lock().await.push(fresh);
                }
            }
        }
    }

    /// Checks, without waiting and without sending, that a connection can carry a message: the
    /// peer has not closed or reset it (a receiver that closes after every ack leaves its FIN
    /// waiting), and sent nothing unasked. On a two-way connection, messages it sent are set
    /// aside for the session instead; a stray ack is dropped.
    fn still_usable(&self, conn: &mut UpstreamConn, two_way: bool) -> bool {
        match conn.link.read_ready() {
            Ready::Nothing => true,
            Ready::Closed => {
                tracing::debug!(route = %self.route, upstream = %self.cfg.role, "upstream connection was closed by the peer; reconnecting");
                false
            }
            Ready::Bytes(_) if !two_way => {
                tracing::debug!(route = %self.route, upstream = %self.cfg.role, "upstream sent bytes nobody asked for; using a new connection");
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

    async fn round_trip(
        &self,
        conn: &mut UpstreamConn,
        frame: &Frame,
        control_id: &[u8],
        two_way: bool,
    ) -> Result<VerifiedAck, UpstreamError> {
        let ack_timeout = self.cfg.ack_timeout;
        let mut held: Vec<Decoded> = Vec::new();
        let sent_at = Instant::now();
        // The exchange borrows the link; the ack timeout runs on the connection's own timer.
        let UpstreamConn {
            link,
            release,
            ack_timer,
            ..
        } = conn;
        let release = *release;
        let exchange = async {
            if release == MllpRelease::Two {
                commit::send_committed(
                    link,
                    frame.payload(),
                    ack_timeout,
                    &mut held,
                    MAX_SET_ASIDE,
                )
                .await
                .map_err(UpstreamError::NotCommitted)?;
            } else {
                link.send_frame(frame).await.map_err(UpstreamError::Send)?;
            }
            // The ack may already be among the frames that came before the commit block.
            let mut earlier = std::mem::take(&mut held).into_iter();
            loop {
                let item = match earlier.next() {
                    Some(item) => item,
                    None => match link.next().await {
                        Ok(Some(item)) => item,
                        Ok(None) => return Err(UpstreamError::ClosedBeforeAck),
                        Err(err) => return Err(UpstreamError::Receive(err)),
                    },
                };
                let ack = match item {
                    Decoded::Frame(ack) => ack,
                    Decoded::Oversize { len, .. } if !two_way => {
                        return Err(UpstreamError::AckOversize(len))
                    }
                    oversize @ Decoded::Oversize { .. } => {
                        held.push(oversize);
                        continue;
                    }
                };
                if commit::of_frame(&ack).is_some() {
                    continue; // a stray commit block: nothing waits for it
                }
                // Parsed once: whether it answers our message, or (two-way) is not an ack.
                let verdict = ack::verify(ack.payload(), control_id);
                // On a two-way connection a frame with a header but no MSA is the receiver's
                // own message, not our ack.
                if two_way && matches!(verdict, Err(AckMismatch::NotAnAck(AckError::NoMsa))) {
                    if held.len() >= MAX_SET_ASIDE {
                        return Err(UpstreamError::Flooded);
                    }
                    held.push(Decoded::Frame(ack));
                    continue;
                }
                if release == MllpRelease::Two {
                    commit::answer(link, Commit::Ack)
                        .await
                        .map_err(UpstreamError::Send)?;
                }
                return Ok((ack, verdict));
            }
        };
        let deadline = tokio::time::Instant::from_std(sent_at + ack_timeout);
        let outcome = ack_timer.limit(deadline, exchange).await;
        if !conn.link.set_aside(held) {
            return Err(UpstreamError::Flooded);
        }
        let (ack, verdict) = outcome.map_err(|_| UpstreamError::AckTimeout(ack_timeout))??;
        let acked_at = Instant::now();
        conn.last_used = acked_at;
        self.ack_duration.observe(acked_at - sent_at);
        let code = verdict.map_err(UpstreamError::AckMismatch)?;
        Ok(VerifiedAck {
            code,
            ack: ack.payload_bytes(),
        })
    }

    /// Opens a new connection (resolve, TCP, optional TLS) within `connect_timeout`, unless the
    /// upstream is failing and its reconnect backoff has not elapsed.
    pub async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        self.connect_for(None).await
    }

    /// Like [`Upstream::connect`]; with `send_proxy_protocol`, the PROXY header names `origin`
    /// (LOCAL / UNKNOWN when `None`).
    pub async fn connect_for(
        &self,
        origin: Option<crate::net::proxy_protocol::Origin>,
    ) -> Result<UpstreamConn, UpstreamError> {
        if let Some(accepted) = &self.accepted {
            let stream = self.wait_for_receiver(accepted).await?;
            return Ok(self.conn_over(stream));
        }
        let addr = self.cfg.role.to_string();
        self.gate.admit(&addr)?;
        let limit = self.cfg.connect_timeout;
        // Boxed: opening (TCP, SOCKS or HTTP CONNECT, TLS) is the largest state a message's
        // future can be in; on the heap only while it runs, it does not size every session's
        // task for its whole life (issue 7, idle memory per connection).
        let opened = timeout(limit, Box::pin(self.open(&addr, origin)))
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::ConnectTimeout {
                    addr: addr.clone(),
                    timeout: limit,
                })
            });
        crate::ops::metrics::upstream_connect(&self.route, opened.is_ok());
        let stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                let wait = self.gate.failed(&err);
                let retry_in =
                    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64));
                if err.is_permanent() {
                    tracing::error!(route = %self.route, upstream = %addr, error = %err, %retry_in, "cannot connect to the upstream and retrying soon will not help (certificate or TLS settings); retrying at the maximum backoff");
                } else {
                    tracing::warn!(route = %self.route, upstream = %addr, error = %err, %retry_in, "cannot connect to the upstream");
                }
                return Err(err);
            }
        };
        self.gate.connected();
        tracing::debug!(route = %self.route, upstream = %addr, "upstream connection open");
        Ok(self.conn_over(stream))
    }

    fn conn_over(&self, stream: Stream) -> UpstreamConn {
        UpstreamConn {
            link: Link::with_framing(stream, self.cfg.max_ack_bytes, self.cfg.framing),
            fresh: true,
            last_used: Instant::now(),
            release: self.cfg.release,
            ack_timer: DeadlineTimer::default(),
        }
    }

    /// With `accept`: the oldest receiver connection still open, waiting up to
    /// `connect_timeout` for one to connect in.
    async fn wait_for_receiver(&self, accepted: &Accepted) -> Result<Stream, UpstreamError> {
        let waited = self.cfg.connect_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let arrived = accepted.arrived.notified();
            loop {
                let next = accepted.lock().pop_front();
                let Some((mut tcp, peer)) = next else { break };
                if closed_while_waiting(&mut tcp) {
                    tracing::debug!(route = %self.route, %peer, "a waiting receiver connection was closed; skipping it");
                    continue;
                }
                tracing::debug!(route = %self.route, %peer, "using a receiver connection");
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

    async fn open(
        &self,
        addr: &str,
        origin: Option<crate::net::proxy_protocol::Origin>,
    ) -> Result<Stream, UpstreamError> {
        let original;
        let target = match &self.cfg.role {
            ReceiverRole::Connect(target) => target,
            ReceiverRole::OriginalDestination => {
                let Some(origin) = origin else {
                    return Err(UpstreamError::Connect {
                        addr: addr.to_string(),
                        source: io::Error::other(
                            "no original destination is known for this connection",
                        ),
                    });
                };
                original = config::UpstreamAddress {
                    host: origin.destination.ip().to_string(),
                    port: origin.destination.port(),
                };
                &original
            }
            ReceiverRole::Accept { .. } => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source: io::Error::other(
                        "this upstream accepts its receiver; it does not connect",
                    ),
                })
            }
        };
        let tcp = match &self.cfg.via {
            Some(proxy) => crate::net::egress::connect(proxy, &target.host, target.port)
                .await
                .map_err(|reason| UpstreamError::Proxy {
                    proxy: proxy.to_string(),
                    addr: addr.to_string(),
                    reason,
                })?,
            None => {
                let source = origin
                    .filter(|_| self.cfg.transparent_source)
                    .map(|o| o.source.ip());
                self.direct(target, addr, source).await?
            }
        };
        let mut tcp = tcp;
        if let Some(version) = self.cfg.send_proxy_protocol {
            use tokio::io::AsyncWriteExt;
            let header = crate::net::proxy_protocol::header(version, origin);
            tcp.write_all(&header)
                .await
                .map_err(|source| UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
        }
        self.secure(tcp, addr).await
    }

    /// A TCP connection straight to the upstream (the first address that answers).
    /// `source`: connect from this (non-local) address, the sender's (`transparent_source`).
    async fn direct(
        &self,
        target: &config::UpstreamAddress,
        addr: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<TcpStream, UpstreamError> {
        let candidates = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|source| UpstreamError::Resolve {
                addr: addr.to_string(),
                source,
            })?;
        let mut last_err =
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut tcp = None;
        for candidate in candidates {
            let attempt = match source {
                None => TcpStream::connect(candidate).await,
                Some(source) => connect_from(source, candidate).await,
            };
            match attempt {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last_err = err,
            }
        }
        tcp.ok_or_else(|| UpstreamError::Connect {
            addr: addr.to_string(),
            source: last_err,
        })
    }

    /// Socket options, then TLS when configured (end to end, also through a proxy tunnel).
    async fn secure(&self, tcp: TcpStream, addr: &str) -> Result<Stream, UpstreamError> {
        if let Err(err) = net::tune(&tcp, &self.cfg.keepalive) {
            tracing::warn!(route = %self.route, upstream = %addr, error = %err, "could not set TCP options on the upstream connection");
        }
        let Some(tls) = &self.cfg.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|source| UpstreamError::Handshake {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Stream::ClientTls(Box::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(initial_ms: u64, max_ms: u64) -> ConnectGate {
        ConnectGate::new(&config::Reconnect {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        })
    }

    fn refused() -> UpstreamError {
        UpstreamError::Connect {
            addr: "ehr:2575".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
    }

    fn bad_certificate() -> UpstreamError {
        UpstreamError::Handshake {
            addr: "ehr:2575".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
        }
    }

    fn retry_in(result: Result<(), UpstreamError>) -> Option<Duration> {
        match result {
            Ok(()) => None,
            Err(UpstreamError::Backoff { retry_in, .. }) => Some(retry_in),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_attempts_wait_out_a_growing_jittered_backoff() {
        let gate = gate(1000, 8000);
        assert!(
            gate.admit("ehr").is_ok(),
            "a healthy upstream is tried at once"
        );
        let first = gate.failed(&refused());
        assert!((500..=1000).contains(&first.as_millis()), "{first:?}");
        let left = retry_in(gate.admit("ehr")).expect("refused during the backoff");
        assert!(left <= first);
        tokio::time::advance(first).await;
        assert!(gate.admit("ehr").is_ok(), "admitted once the wait is over");
        let second = gate.failed(&refused());
        assert!(
            (1000..=2000).contains(&second.as_millis()),
            "doubled: {second:?}"
        );
        tokio::time::advance(second).await;
        assert!(gate.admit("ehr").is_ok());
        for _ in 0..5 {
            let wait = gate.failed(&refused());
            assert!(
                wait <= Duration::from_millis(8000),
                "capped at max: {wait:?}"
            );
            tokio::time::advance(wait).await;
            assert!(gate.admit("ehr").is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_attempt_is_in_flight_while_failing() {
        let gate = gate(1000, 8000);
        let wait = gate.failed(&refused());
        tokio::time::advance(wait).await;
        assert!(gate.admit("ehr").is_ok(), "one attempt goes out");
        assert_eq!(
            retry_in(gate.admit("ehr")),
            Some(Duration::ZERO),
            "a second caller is told to wait, not sent to connect too"
        );
        gate.connected();
        assert!(
            gate.admit("ehr").is_ok(),
            "the attempt finished; the next may go"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_resets_only_after_a_healthy_period() {
        let gate = gate(1000, 60_000);
        for _ in 0..4 {
            let wait = gate.failed(&refused());
            tokio::time::advance(wait).await;
            let _ = gate.admit("ehr");
        }
        gate.connected();
        gate.healthy();
        assert!(
            gate.admit("ehr").is_ok(),
            "healthy: connections open freely at once"
        );
        // A receiver that falls over again a moment later: the backoff goes on growing.
        tokio::time::advance(Duration::from_secs(5)).await;
        let wait = gate.failed(&refused());
        assert!(
            wait >= Duration::from_millis(8000),
            "kept its level: {wait:?}"
        );
        tokio::time::advance(wait).await;
        let _ = gate.admit("ehr");
        gate.connected();
        // Healthy for the whole period: the next failure starts again from initial.
        gate.healthy();
        tokio::time::advance(HEALTHY_PERIOD).await;
        gate.healthy();
        let wait = gate.failed(&refused());
        assert!(
            wait <= Duration::from_millis(1000),
            "back to initial: {wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_waits_the_maximum() {
        let gate = gate(1000, 8000);
        let err = bad_certificate();
        assert!(err.is_permanent());
        let wait = gate.failed(&err);
        assert!((4000..=8000).contains(&wait.as_millis()), "{wait:?}");
        assert!(!refused().is_permanent());
    }
}
