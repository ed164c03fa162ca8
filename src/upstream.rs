//! The upstream leg: connecting to the receiver (TCP or TLS) and exchanging one frame for its ack.
//!
//! Owns connection set-up under a timeout, keepalive tuning, the paired-or-pooled connection
//! policy, stale-connection detection before reuse, and ack verification (MSA-2 must equal the
//! message's control id). An exchange that times out closes its connection, so a late ack can
//! never answer the next message. Must not know about downstream peers or admission policy.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::timeout;

use crate::ack::{self, AckMismatch};
use crate::backoff::Backoff;
use crate::codec::{Decoded, Frame};
use crate::config::{self, Connections};
use crate::hl7::AckCode;
use crate::link::Link;
use crate::net::{self, Stream};

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
        reason: crate::egress::EgressError,
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
            UpstreamError::Send(_) | UpstreamError::ClosedBeforeAck | UpstreamError::Receive(_)
        )
    }
}

/// The upstream's verified ack, ready to relay unchanged.
#[derive(Debug)]
pub struct Reply {
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
    next_attempt: Option<Instant>,
    in_flight: bool,
    last_error: String,
}

impl ConnectGate {
    fn new(reconnect: &config::Reconnect) -> ConnectGate {
        ConnectGate {
            state: std::sync::Mutex::new(GateState {
                backoff: Backoff::new(reconnect.initial, reconnect.max),
                failing: false,
                next_attempt: None,
                in_flight: false,
                last_error: String::new(),
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
        let now = Instant::now();
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
        let wait = if err.is_permanent() {
            state.backoff.longest_wait()
        } else {
            state.backoff.next_wait()
        };
        state.failing = true;
        state.in_flight = false;
        state.next_attempt = Some(Instant::now() + wait);
        state.last_error = err.to_string();
        wait
    }

    fn connected(&self) {
        self.lock().in_flight = false;
    }

    fn healthy(&self) {
        let mut state = self.lock();
        if state.failing {
            state.failing = false;
            state.next_attempt = None;
            state.backoff.reset();
        }
    }
}

/// A route's upstream: how to connect and, in pool mode, the shared connections.
pub struct Upstream {
    route: Arc<str>,
    cfg: config::Upstream,
    pool: Option<Pool>,
    gate: ConnectGate,
}

struct Pool {
    size: usize,
    /// One permit per connection the pool may hold; waiting is first come, first served.
    permits: Semaphore,
    idle: Mutex<Vec<UpstreamConn>>,
}

impl Upstream {
    pub fn new(route: Arc<str>, cfg: config::Upstream) -> Upstream {
        let pool = match cfg.connections {
            Connections::Paired => None,
            Connections::Pool(n) => Some(Pool {
                size: n.get(),
                permits: Semaphore::new(n.get()),
                idle: Mutex::new(Vec::with_capacity(n.get())),
            }),
        };
        let gate = ConnectGate::new(&cfg.reconnect);
        Upstream {
            route,
            cfg,
            pool,
            gate,
        }
    }

    pub fn address(&self) -> String {
        self.cfg.address.to_string()
    }

    /// Sends `frame` and waits for its ack, which must answer `control_id`.
    ///
    /// `paired` is the sending session's own connection slot (used when connections are paired;
    /// pooled routes ignore it). On any error the connection involved is closed.
    pub async fn exchange(
        &self,
        paired: &mut Option<UpstreamConn>,
        frame: &Frame,
        control_id: &[u8],
    ) -> Result<Reply, UpstreamError> {
        let Some(pool) = &self.pool else {
            return self.exchange_on(paired, frame, control_id).await;
        };
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
        let result = self.exchange_on(&mut slot, frame, control_id).await;
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
    ) -> Result<Reply, UpstreamError> {
        if let (Some(conn), Some(idle)) = (slot.as_mut(), self.cfg.idle_reconnect) {
            if conn.last_used.elapsed() >= idle {
                tracing::debug!(route = %self.route, upstream = %self.cfg.address, idle = %humantime::format_duration(idle), "upstream connection quiet for idle_reconnect; closing it and opening a new one before a firewall forgets it");
                let _ = timeout(Duration::from_secs(1), conn.link.shutdown()).await;
                *slot = None;
            }
        }
        if slot
            .as_mut()
            .is_some_and(|conn| conn.link.get_mut().is_stale())
        {
            tracing::debug!(route = %self.route, upstream = %self.cfg.address, "upstream connection was closed by the peer; reconnecting");
            *slot = None;
        }
        loop {
            let conn = match slot {
                Some(conn) => conn,
                None => slot.insert(self.connect().await?),
            };
            let was_fresh = std::mem::replace(&mut conn.fresh, false);
            let result = self.round_trip(conn, frame, control_id).await;
            conn.last_used = Instant::now();
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
                    tracing::debug!(route = %self.route, upstream = %self.cfg.address, reason = err.reason(), "reused upstream connection failed before any ack; retrying once on a new one");
                }
            }
        }
    }

    async fn round_trip(
        &self,
        conn: &mut UpstreamConn,
        frame: &Frame,
        control_id: &[u8],
    ) -> Result<Reply, UpstreamError> {
        let ack_timeout = self.cfg.ack_timeout;
        let exchange = async {
            conn.link
                .send_frame(frame)
                .await
                .map_err(UpstreamError::Send)?;
            match conn.link.next().await {
                Ok(Some(Decoded::Frame(ack))) => Ok(ack),
                Ok(Some(Decoded::Oversize { len, .. })) => Err(UpstreamError::AckOversize(len)),
                Ok(None) => Err(UpstreamError::ClosedBeforeAck),
                Err(err) => Err(UpstreamError::Receive(err)),
            }
        };
        let ack = timeout(ack_timeout, exchange)
            .await
            .map_err(|_| UpstreamError::AckTimeout(ack_timeout))??;
        let code = ack::verify(ack.payload(), control_id).map_err(UpstreamError::AckMismatch)?;
        Ok(Reply {
            code,
            ack: ack.payload_bytes(),
        })
    }

    /// Opens a new connection (resolve, TCP, optional TLS) within `connect_timeout`, unless the
    /// upstream is failing and its reconnect backoff has not elapsed.
    async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        let addr = self.cfg.address.to_string();
        self.gate.admit(&addr)?;
        let limit = self.cfg.connect_timeout;
        let opened = timeout(limit, self.open(&addr)).await.unwrap_or_else(|_| {
            Err(UpstreamError::ConnectTimeout {
                addr: addr.clone(),
                timeout: limit,
            })
        });
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
        Ok(UpstreamConn {
            link: Link::with_framing(stream, self.cfg.max_ack_bytes, self.cfg.framing),
            fresh: true,
            last_used: Instant::now(),
        })
    }

    async fn open(&self, addr: &str) -> Result<Stream, UpstreamError> {
        let tcp = match &self.cfg.via {
            Some(proxy) => {
                crate::egress::connect(proxy, &self.cfg.address.host, self.cfg.address.port)
                    .await
                    .map_err(|reason| UpstreamError::Proxy {
                        proxy: proxy.to_string(),
                        addr: addr.to_string(),
                        reason,
                    })?
            }
            None => self.direct(addr).await?,
        };
        self.secure(tcp, addr).await
    }

    /// A TCP connection straight to the upstream (the first address that answers).
    async fn direct(&self, addr: &str) -> Result<TcpStream, UpstreamError> {
        let candidates =
            tokio::net::lookup_host((self.cfg.address.host.as_str(), self.cfg.address.port))
                .await
                .map_err(|source| UpstreamError::Resolve {
                    addr: addr.to_string(),
                    source,
                })?;
        let mut last_err =
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut tcp = None;
        for candidate in candidates {
            match TcpStream::connect(candidate).await {
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
