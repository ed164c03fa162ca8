//! Getting a connection to the receiver: the connect gate (while the receiver fails, one
//! attempt at a time after a jittered, growing backoff), name resolution, TCP (optionally from
//! the sender's own address), an egress proxy tunnel, the PROXY header, socket options and TLS,
//! all under `connect_timeout`; or, in accept mode, the oldest receiver connection waiting.
//! Must not know frames, acks or the pool.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::conn::UpstreamConn;
use super::error::UpstreamError;
use super::receivers::Accepted;
use crate::config::{self, ReceiverRole};
use crate::net::proxy_protocol::Origin;
use crate::net::{self, Stream};
use crate::timing::backoff::Backoff;
use crate::timing::deadline_timer::DeadlineTimer;
use crate::wire::link::Link;

/// Opens connections to one upstream: its settings, its connect gate and, in accept mode, the
/// receivers waiting to be used.
pub(super) struct Connector {
    route: Arc<str>,
    cfg: config::UpstreamConfig,
    gate: ConnectGate,
    /// With `accept`: the connections receivers opened to us.
    accepted: Option<Arc<Accepted>>,
    /// Bumped by an operator's reconnect: older connections are not reused.
    pub(super) generation: std::sync::atomic::AtomicU64,
}

impl Connector {
    pub(super) fn new(route: Arc<str>, cfg: config::UpstreamConfig) -> Connector {
        let gate = ConnectGate::new(&cfg.reconnect);
        let accepted = match &cfg.role {
            ReceiverRole::Connect(_) | ReceiverRole::OriginalDestination => None,
            ReceiverRole::Accept { listen, allow } => {
                Some(Arc::new(Accepted::new(*listen, allow.clone())))
            }
        };
        Connector {
            route,
            cfg,
            gate,
            accepted,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn route(&self) -> &Arc<str> {
        &self.route
    }

    pub(super) fn config(&self) -> &config::UpstreamConfig {
        &self.cfg
    }

    /// With `accept`: the receivers waiting to be used.
    pub(super) fn accepted(&self) -> Option<&Arc<Accepted>> {
        self.accepted.as_ref()
    }

    /// An exchange succeeded: see [`ConnectGate::healthy`].
    pub(super) fn healthy(&self) {
        self.gate.healthy();
    }

    /// Opens a new connection (resolve, TCP, optional TLS) within `connect_timeout`, unless the
    /// upstream is failing and its reconnect backoff has not elapsed; in accept mode, takes the
    /// oldest waiting receiver. With `send_proxy_protocol`, the PROXY header names `origin`
    /// (LOCAL / UNKNOWN when `None`).
    pub(super) async fn connect_for(
        &self,
        origin: Option<Origin>,
    ) -> Result<UpstreamConn, UpstreamError> {
        if let Some(accepted) = &self.accepted {
            let stream = accepted.wait(self.cfg.connect_timeout, &self.route).await?;
            return Ok(self.conn_over(stream));
        }
        let addr = self.cfg.role.to_string();
        let ticket = self.gate.admit(&addr)?;
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
        let failure = opened.as_ref().err().map(|e| e.to_string());
        crate::ops::notify::upstream_connect(&self.route, &addr, failure.as_deref());
        let stream = match opened {
            Ok(stream) => stream,
            Err(err) => {
                let wait = self.gate.failed(ticket, &err);
                let retry_in_ms = wait.as_millis() as u64;
                if err.is_permanent() {
                    tracing::error!(route = %self.route, upstream = %addr, error = %err, retry_in_ms, "cannot connect to the upstream and retrying soon will not help (certificate or TLS settings); retrying at the maximum backoff");
                } else {
                    tracing::warn!(route = %self.route, upstream = %addr, error = %err, retry_in_ms, "cannot connect to the upstream");
                }
                return Err(err);
            }
        };
        self.gate.connected();
        tracing::debug!(route = %self.route, upstream = %addr, "upstream connection open");
        Ok(self.conn_over(stream))
    }

    /// `health_check`: opens a connection as for a message (TCP, and the TLS handshake when the
    /// upstream is TLS; a LOCAL/UNKNOWN PROXY header when it wants one) within `limit`, and
    /// closes it at once: never a message, and outside the reconnect backoff.
    pub(super) async fn probe(&self, limit: Duration) -> Result<(), UpstreamError> {
        let addr = self.cfg.role.to_string();
        match timeout(limit, Box::pin(self.open(&addr, None))).await {
            Ok(opened) => opened.map(drop),
            Err(_) => Err(UpstreamError::ConnectTimeout {
                addr,
                timeout: limit,
            }),
        }
    }

    fn conn_over(&self, stream: Stream) -> UpstreamConn {
        UpstreamConn {
            link: Link::with_framing(stream, self.cfg.max_ack_bytes, self.cfg.framing),
            fresh: true,
            last_used: Instant::now(),
            release: self.cfg.release,
            commit_timeout: self.cfg.commit_timeout(),
            ack_timer: DeadlineTimer::default(),
            generation: self.generation.load(std::sync::atomic::Ordering::Relaxed),
            serial: super::conn::next_serial(),
        }
    }

    async fn open(&self, addr: &str, origin: Option<Origin>) -> Result<Stream, UpstreamError> {
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
            Some(proxy) => {
                net::egress::connect(proxy, &target.host, target.port, self.cfg.local_address)
                    .await
                    .map_err(|reason| UpstreamError::Proxy {
                        proxy: proxy.to_string(),
                        addr: addr.to_string(),
                        reason,
                    })?
            }
            None => {
                let transparent = origin
                    .filter(|_| self.cfg.transparent_source)
                    .map(|o| (o.source.ip(), true));
                let source = transparent.or(self.cfg.local_address.map(|ip| (ip, false)));
                self.direct(target, addr, source).await?
            }
        };
        let mut tcp = tcp;
        if let Some(version) = self.cfg.send_proxy_protocol {
            use tokio::io::AsyncWriteExt;
            let header = net::proxy_protocol::header(version, origin);
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
    /// `source`: connect from this address: the sender's, not ours (`transparent_source`, with
    /// `true`), or one of ours (`local_address`, with `false`).
    async fn direct(
        &self,
        target: &config::UpstreamAddress,
        addr: &str,
        source: Option<(std::net::IpAddr, bool)>,
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
                Some((source, transparent)) => {
                    net::bind::connect_from(source, candidate, transparent).await
                }
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
        if let Err(err) = net::tune(&tcp, &self.cfg.keepalive, &self.cfg.socket) {
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

/// Paces connection attempts after failures: while the upstream is failing, at most one
/// attempt is in flight, and the next waits out a jittered, growing backoff. One outage is one
/// step: failures of attempts that started before the latest step was taken (sixteen busy
/// sessions whose connects all fail within a millisecond) do not advance the backoff again. A
/// successful exchange resets it.
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
    /// How many backoff steps have been taken since the last success; an attempt remembers the
    /// step it was admitted in, and only a failure in the current step takes the next one.
    step: u64,
}

/// The step an attempt was admitted in (see [`GateState::step`]).
#[derive(Clone, Copy, Debug)]
struct Ticket(u64);

impl ConnectGate {
    fn new(reconnect: &config::Reconnect) -> ConnectGate {
        ConnectGate {
            state: std::sync::Mutex::new(GateState {
                backoff: Backoff::new(reconnect.initial, reconnect.max),
                failing: false,
                next_attempt: None,
                in_flight: false,
                last_error: String::new(),
                step: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ok to try now (with the step the attempt belongs to), or how long until the next attempt.
    fn admit(&self, addr: &str) -> Result<Ticket, UpstreamError> {
        let mut state = self.lock();
        if !state.failing {
            return Ok(Ticket(state.step));
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
        Ok(Ticket(state.step))
    }

    /// Records a failed attempt; returns the wait before the next one. Only the first failure
    /// of a step advances the backoff; a failure of an attempt admitted in an earlier step
    /// (started together with the one that failed first) is the same outage and only learns
    /// the wait already set.
    fn failed(&self, ticket: Ticket, err: &UpstreamError) -> Duration {
        let mut state = self.lock();
        let now = tokio::time::Instant::now();
        if ticket.0 != state.step {
            return state
                .next_attempt
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        }
        let wait = if err.is_permanent() {
            state.backoff.longest_wait()
        } else {
            state.backoff.next_wait()
        };
        state.step += 1;
        state.failing = true;
        state.in_flight = false;
        state.next_attempt = Some(now + wait);
        state.last_error = err.to_string();
        wait
    }

    fn connected(&self) {
        self.lock().in_flight = false;
    }

    /// An exchange succeeded: connections may be opened freely again and the next outage
    /// starts from `reconnect.initial`.
    fn healthy(&self) {
        let mut state = self.lock();
        if state.failing {
            state.backoff.reset();
            state.step += 1;
            state.failing = false;
            state.next_attempt = None;
        }
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

    fn retry_in(result: Result<Ticket, UpstreamError>) -> Option<Duration> {
        match result {
            Ok(_) => None,
            Err(UpstreamError::Backoff { retry_in, .. }) => Some(retry_in),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    fn admitted(gate: &ConnectGate) -> Ticket {
        gate.admit("ehr").expect("admitted")
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_attempts_wait_out_a_growing_jittered_backoff() {
        let gate = gate(1000, 8000);
        let ticket = admitted(&gate);
        let first = gate.failed(ticket, &refused());
        assert!((500..=1000).contains(&first.as_millis()), "{first:?}");
        let left = retry_in(gate.admit("ehr")).expect("refused during the backoff");
        assert!(left <= first);
        tokio::time::advance(first).await;
        let ticket = admitted(&gate);
        let second = gate.failed(ticket, &refused());
        assert!(
            (1000..=2000).contains(&second.as_millis()),
            "doubled: {second:?}"
        );
        tokio::time::advance(second).await;
        for _ in 0..5 {
            let ticket = admitted(&gate);
            let wait = gate.failed(ticket, &refused());
            assert!(
                wait <= Duration::from_millis(8000),
                "capped at max: {wait:?}"
            );
            tokio::time::advance(wait).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_attempt_is_in_flight_while_failing() {
        let gate = gate(1000, 8000);
        let wait = gate.failed(admitted(&gate), &refused());
        tokio::time::advance(wait).await;
        let _one = admitted(&gate);
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

    /// Issue 28, finding 1: sixteen busy sessions connect at once while the receiver restarts;
    /// all sixteen fail within a millisecond. That is one outage: the backoff advances once,
    /// the next gated attempt takes the second step, and a success starts again from initial.
    #[tokio::test(start_paused = true)]
    async fn concurrent_failures_within_one_step_advance_the_backoff_once() {
        let gate = gate(1000, 180_000);
        let tickets: Vec<Ticket> = (0..16).map(|_| admitted(&gate)).collect();
        let mut waits = Vec::new();
        for ticket in tickets {
            waits.push(gate.failed(ticket, &refused()));
            tokio::time::advance(Duration::from_micros(40)).await;
        }
        let first = waits[0];
        assert!((500..=1000).contains(&first.as_millis()), "{first:?}");
        for (i, wait) in waits.iter().enumerate().skip(1) {
            assert!(
                *wait <= first,
                "failure {i} of the same step learned the wait already set, not a longer one: {wait:?} > {first:?}"
            );
        }
        tokio::time::advance(first).await;
        let second = gate.failed(admitted(&gate), &refused());
        assert!(
            (1000..=2000).contains(&second.as_millis()),
            "the next attempt takes the second step only: {second:?}"
        );
        tokio::time::advance(second).await;
        admitted(&gate);
        gate.connected();
        gate.healthy();
        // Healthy again: sessions connect freely; the next outage starts from initial, and
        // again all its concurrent failures count once.
        let tickets: Vec<Ticket> = (0..16).map(|_| admitted(&gate)).collect();
        let waits: Vec<Duration> = tickets
            .into_iter()
            .map(|t| gate.failed(t, &refused()))
            .collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(1000)),
            "a success reset the backoff: {waits:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_a_success_starts_again_from_initial() {
        let gate = gate(1000, 60_000);
        for _ in 0..4 {
            let wait = gate.failed(admitted(&gate), &refused());
            tokio::time::advance(wait).await;
        }
        admitted(&gate);
        gate.connected();
        gate.healthy();
        assert!(
            gate.admit("ehr").is_ok(),
            "healthy: connections open freely at once"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let wait = gate.failed(admitted(&gate), &refused());
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
        let wait = gate.failed(admitted(&gate), &err);
        assert!((4000..=8000).contains(&wait.as_millis()), "{wait:?}");
        assert!(!refused().is_permanent());
    }
}
