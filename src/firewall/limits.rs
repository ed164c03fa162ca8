//! Per-source rate limits and connection caps for one route.
//!
//! Owns the counting behind a route's `limits:` block: new connections per minute, open
//! connections, messages per second (with burst) and bytes per second, each per source, plus the
//! bookkeeping that keeps that state bounded. It must not know sockets, TLS or HL7: callers pass
//! a peer address and a message length, and decide what a refusal means (close the connection,
//! answer AE, or sleep and ask again, per [`OnLimit`]). It never blocks and never sleeps.
//!
//! # Sources
//!
//! A source is the peer's IPv4 address, or its IPv6 /64 (one host usually owns a whole /64, so
//! keying by full address would let it rotate through 2^64 identities). IPv4-mapped IPv6 peers
//! (`::ffff:10.1.2.3`, what a dual-stack listener reports) are the IPv4 address they carry.
//! See [`SourceLimits::key`].
//!
//! # Bounded memory: the tracked-sources cap
//!
//! The rate counters live in governor's keyed limiters (one `DefaultKeyedRateLimiter`-shaped
//! limiter per configured limit, about 69 bytes per key, and governor never shrinks a map by
//! itself). A registry of tracked sources sits in front of them and is the only way a key gets
//! into a limiter, so every limiter holds at most `max_tracked_sources` keys, and so does the
//! registry:
//!
//! - A source that is already tracked keeps working normally whatever the table's size.
//! - A NEW source arriving while `max_tracked_sources` are tracked is refused at
//!   [`SourceLimits::admit_connection`] with [`Refusal::TooManySources`] (the caller closes the
//!   connection before reading anything) until [`SourceLimits::prune`] frees room. No state is
//!   created for it. There is no unlimited bypass and no unbounded growth.
//! - A source is forgotten by `prune` once it has no open connection, its limiter state is
//!   indistinguishable from a fresh one (it has been idle for the longest full-refill time of the
//!   configured limits, e.g. 60 s with `connections_per_minute`) and it owes no oversize debt
//!   (below). Forgetting such a source changes no decision: it comes back with a full allowance,
//!   which is what it had.
//! - A source with an open connection is never forgotten; so a connection always finds its source.
//!   [`SourceLimits::check_message`] for a source that was never admitted (a caller bug) tracks it
//!   if there is room and otherwise answers "wait [`UNTRACKED_SOURCE_RETRY`]".
//!
//! With no limit configured at all nothing is tracked: every call is allowed without touching
//! any map.
//!
//! # Messages larger than one second of byte quota
//!
//! A token bucket cannot pass a message bigger than the bucket (governor's `check_n` answers
//! `InsufficientCapacity`). Such a message is allowed when the source's byte bucket is full (the
//! source has been quiet for a second's worth of quota); it empties the bucket and the source
//! then gets no byte allowance until the whole message is paid for at the configured rate, i.e.
//! for `size / bytes_per_second` after it was admitted. The long-run rate stays exactly
//! `bytes_per_second`; only the normal one-second burst is possible on top, as for any source.
//!
//! # Checking order
//!
//! Governor has no "peek", and a passing check charges the bucket. `check_message` checks the
//! oversize debt first (charges nothing), then the message rate, then the byte rate. When the
//! byte rate refuses after the message rate passed, that one message has been counted; a caller
//! that asks again for the same message after waiting is counted again. This errs on the strict
//! side (a source limited by bytes may be limited a little sooner by message rate), never the lax
//! one.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{OnLimit, RateLimits};

/// What [`SourceLimits::check_message`] answers for a source that was never admitted when the
/// tracked-sources table is full: wait this long and ask again (or answer AE).
pub const UNTRACKED_SOURCE_RETRY: Duration = Duration::from_secs(1);

/// Byte rates above this are counted in cells of several bytes, so that one cell's refill period
/// stays at or above a microsecond (governor counts time in whole nanoseconds; finer cells would
/// make the rounding error noticeable, and rates above `u32::MAX` would not fit).
const MAX_BYTE_CELLS_PER_SECOND: u64 = 1_000_000;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A keyed governor limiter: `DefaultKeyedRateLimiter<SourceKey>` when `C` is the default clock.
type Keyed<C> = RateLimiter<
    SourceKey,
    DefaultKeyedStateStore<SourceKey>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// What a peer is limited by: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 peer (including an IPv4-mapped IPv6 peer).
    Ipv4(Ipv4Addr),
    /// An IPv6 peer's /64: the network address (the low 64 bits are zero).
    Ipv6Net(Ipv6Addr),
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Ipv4(ip) => write!(f, "{ip}"),
            SourceKey::Ipv6Net(net) => write!(f, "{net}/64"),
        }
    }
}

/// Why a connection was refused at accept. The caller closes it before reading anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// `connections_per_minute` exhausted (the value is the configured rate).
    #[error("more than {0} new connections per minute from this source")]
    ConnectionRate(u32),
    /// `max_connections_per_source` reached (the value is the configured maximum).
    #[error("{0} connections already open from this source")]
    TooManyConnections(usize),
    /// A new source while `max_tracked_sources` (the value) are tracked.
    #[error("too many sources tracked ({0}); refusing new sources until idle ones expire")]
    TooManySources(usize),
}

/// The per-source limits of one route. `Send + Sync`: shared (in an `Arc`) by the route's accept
/// loop, which calls [`admit_connection`](Self::admit_connection) and periodically
/// [`prune`](Self::prune), and its sessions, which call
/// [`check_message`](Self::check_message).
///
/// `C` is the clock; it is governor's default (monotonic, quanta-based) clock unless a test
/// supplies another through [`with_clock`](Self::with_clock).
pub struct SourceLimits<C: Clock = DefaultClock> {
    clock: C,
    /// The origin of the registry's timestamps (nanoseconds since `start`).
    start: C::Instant,
    on_limit: OnLimit,
    messages: Option<Keyed<C>>,
    bytes: Option<ByteLimiter<C>>,
    connections: Option<Keyed<C>>,
    connections_per_minute: u32,
    max_connections_per_source: Option<usize>,
    max_tracked_sources: usize,
    /// Whether any limit is configured; when not, nothing is tracked.
    tracking: bool,
    /// How long after its last use a source's limiter state is certainly back to fresh: the
    /// longest full-refill time of the configured limiters, plus one cell.
    idle_after: u64,
    /// The tracked sources; a key is in a limiter only if it is here.
    sources: RwLock<HashMap<SourceKey, Source>>,
}

/// The byte-rate limiter: counts cells of `unit` bytes, `burst_cells` per second.
struct ByteLimiter<C: Clock> {
    limiter: Keyed<C>,
    unit: u64,
    burst_cells: NonZeroU32,
    bytes_per_second: u64,
}

/// One tracked source. Mutated under the registry's read lock (atomics), removed under its write
/// lock, so `prune` sees a consistent picture.
#[derive(Default)]
struct Source {
    /// Open connections (permits alive).
    open: AtomicUsize,
    /// When a limiter last looked at this source (nanoseconds since `SourceLimits::start`).
    last_seen: AtomicU64,
    /// After an oversize message: no byte allowance before this time (same unit); 0 = none.
    blocked_until: AtomicU64,
}

impl Source {
    fn touch(&self, now: u64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }
}

impl SourceLimits {
    /// The limits of one route, on governor's default clock.
    pub fn new(cfg: &RateLimits) -> SourceLimits {
        SourceLimits::with_clock(cfg, DefaultClock::default())
    }
}

impl<C> SourceLimits<C>
where
    C: Clock + Clone,
{
    /// The limits of one route on the given clock (tests use governor's `FakeRelativeClock`).
    ///
    /// `bytes_per_second: Some(0)` is treated as no byte limit (config validation rejects it).
    /// `max_tracked_sources: 0` refuses every source whenever a limit is configured.
    pub fn with_clock(cfg: &RateLimits, clock: C) -> SourceLimits<C> {
        let start = clock.now();
        let mut idle_after = Duration::ZERO;
        let mut keyed = |quota: Quota| {
            idle_after =
                idle_after.max(quota.burst_size_replenished_in() + quota.replenish_interval());
            Keyed::<C>::new(quota, DefaultKeyedStateStore::default(), clock.clone())
        };
        let messages = cfg
            .messages_per_second
            .map(|rate| keyed(Quota::per_second(rate).allow_burst(cfg.burst.unwrap_or(rate))));
        let bytes = cfg.bytes_per_second.filter(|&rate| rate > 0).map(|rate| {
            let (quota, unit) = byte_quota(rate);
            ByteLimiter {
                limiter: keyed(quota),
                unit,
                burst_cells: quota.burst_size(),
                bytes_per_second: rate,
            }
        });
        let connections = cfg
            .connections_per_minute
            .map(|rate| keyed(Quota::per_minute(rate)));
        let tracking = messages.is_some()
            || bytes.is_some()
            || connections.is_some()
            || cfg.max_connections_per_source.is_some();
        SourceLimits {
            clock,
            start,
            on_limit: cfg.on_limit,
            messages,
            bytes,
            connections,
            connections_per_minute: cfg.connections_per_minute.map_or(0, NonZeroU32::get),
            max_connections_per_source: cfg.max_connections_per_source,
            max_tracked_sources: cfg.max_tracked_sources,
            tracking,
            idle_after: saturating_nanos(idle_after),
            sources: RwLock::new(HashMap::new()),
        }
    }

    /// The key a peer is limited by: the IPv4 address, or the IPv6 /64 (IPv4-mapped IPv6
    /// canonicalized to IPv4 first).
    pub fn key(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::Ipv4(v4),
            IpAddr::V6(v6) => {
                SourceKey::Ipv6Net(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))
            }
        }
    }

    /// What the route's sessions do with a message over the limit.
    pub fn on_limit(&self) -> OnLimit {
        self.on_limit
    }

    /// At accept: `connections_per_minute` and `max_connections_per_source`, and the
    /// tracked-sources cap for a new source. The permit holds the source's open-connection count
    /// and releases it on drop. A refused connection consumes no allowance.
    pub fn admit_connection(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit<C>, Refusal> {
        if !self.tracking {
            return Ok(ConnectionPermit { held: None });
        }
        let key = Self::key(ip);
        let mut sources = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        if !sources.contains_key(&key) {
            if sources.len() >= self.max_tracked_sources {
                return Err(Refusal::TooManySources(self.max_tracked_sources));
            }
            let source = Source::default();
            source.touch(self.now());
            sources.insert(key, source);
        }
        let source = &sources[&key];
        if let Some(max) = self.max_connections_per_source {
            if source.open.load(Ordering::Relaxed) >= max {
                return Err(Refusal::TooManyConnections(max));
            }
        }
        if let Some(limiter) = &self.connections {
            let allowed = limiter.check_key(&key).is_ok();
            source.touch(self.now());
            if !allowed {
                return Err(Refusal::ConnectionRate(self.connections_per_minute));
            }
        }
        source.open.fetch_add(1, Ordering::Relaxed);
        drop(sources);
        Ok(ConnectionPermit {
            held: Some((Arc::clone(self), key)),
        })
    }

    /// Per message of `bytes` bytes: `messages_per_second` (with burst) and `bytes_per_second`.
    /// `Ok(())`, or how long to wait until it would be allowed: with `on_limit: delay` the caller
    /// sleeps that long and calls again; with `reject` it answers AE. Never blocks.
    pub fn check_message(&self, ip: IpAddr, bytes: usize) -> Result<(), Duration> {
        if self.messages.is_none() && self.bytes.is_none() {
            return Ok(());
        }
        let key = Self::key(ip);
        {
            let sources = self.sources.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(source) = sources.get(&key) {
                return self.check_tracked(&key, source, bytes);
            }
        }
        // Never admitted (a caller bug): track it if there is room, as admit_connection would.
        let mut sources = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        if !sources.contains_key(&key) {
            if sources.len() >= self.max_tracked_sources {
                return Err(UNTRACKED_SOURCE_RETRY);
            }
            sources.insert(key, Source::default());
        }
        self.check_tracked(&key, &sources[&key], bytes)
    }

    /// `check_message` for a source in the registry (the caller holds its lock).
    fn check_tracked(
        &self,
        key: &SourceKey,
        source: &Source,
        bytes: usize,
    ) -> Result<(), Duration> {
        let now = self.now();
        let blocked_until = source.blocked_until.load(Ordering::Relaxed);
        if blocked_until > now {
            return Err(Duration::from_nanos(blocked_until - now));
        }
        if let Some(limiter) = &self.messages {
            let outcome = limiter.check_key(key);
            source.touch(self.now());
            if let Err(not_until) = outcome {
                return Err(not_until.wait_time_from(self.clock.now()));
            }
        }
        if let Some(bytes_limiter) = &self.bytes {
            let outcome = self.charge_bytes(bytes_limiter, key, source, bytes as u64);
            source.touch(self.now());
            outcome?;
        }
        Ok(())
    }

    /// The byte-rate part of `check_message`, including the oversize policy (module doc).
    fn charge_bytes(
        &self,
        b: &ByteLimiter<C>,
        key: &SourceKey,
        source: &Source,
        bytes: u64,
    ) -> Result<(), Duration> {
        let cells = bytes.div_ceil(b.unit);
        let Ok(cells) = u32::try_from(cells) else {
            return self.charge_oversize(b, key, source, bytes);
        };
        let Some(cells) = NonZeroU32::new(cells) else {
            return Ok(());
        };
        if cells > b.burst_cells {
            return self.charge_oversize(b, key, source, bytes);
        }
        match b.limiter.check_key_n(key, cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // Unreachable: cells <= burst_cells is always within capacity.
            Err(_insufficient) => self.charge_oversize(b, key, source, bytes),
        }
    }

    /// A message bigger than the byte bucket: allowed on a full bucket, which it empties; then
    /// no byte allowance until `bytes / bytes_per_second` has passed.
    fn charge_oversize(
        &self,
        b: &ByteLimiter<C>,
        key: &SourceKey,
        source: &Source,
        bytes: u64,
    ) -> Result<(), Duration> {
        match b.limiter.check_key_n(key, b.burst_cells) {
            Ok(Ok(())) => {
                let cost =
                    (u128::from(bytes) * NANOS_PER_SECOND).div_ceil(u128::from(b.bytes_per_second));
                let until = self
                    .now()
                    .saturating_add(u64::try_from(cost).unwrap_or(u64::MAX));
                source.blocked_until.fetch_max(until, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // Unreachable: the burst itself is always within capacity. Refuse for a second
            // rather than panic in the proxy.
            Err(_insufficient) => Err(Duration::from_secs(1)),
        }
    }

    /// Forgets idle sources: governor's `retain_recent` + `shrink_to_fit` on every limiter, then
    /// the sources with no open connection, no oversize debt and no use for a full refill
    /// period. The route calls it periodically (say every 10 s). Holds the registry's write lock
    /// meanwhile (a few milliseconds for a hundred thousand sources).
    pub fn prune(&self) {
        if !self.tracking {
            return;
        }
        let mut sources = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        // Read before the limiters read theirs: a source old enough by this clock reading is
        // certainly gone from every limiter, so the registry stays a superset of their keys.
        let now = self.now();
        for limiter in self.limiters() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        sources.retain(|_, source| {
            source.open.load(Ordering::Relaxed) > 0
                || now
                    < source
                        .last_seen
                        .load(Ordering::Relaxed)
                        .saturating_add(self.idle_after)
                || now < source.blocked_until.load(Ordering::Relaxed)
        });
        sources.shrink_to_fit();
    }

    /// How many sources are tracked (at most `max_tracked_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn limiters(&self) -> impl Iterator<Item = &Keyed<C>> {
        self.messages
            .iter()
            .chain(self.bytes.as_ref().map(|b| &b.limiter))
            .chain(self.connections.iter())
    }

    /// The registry's time: nanoseconds since `start`.
    fn now(&self) -> u64 {
        u64::from(self.clock.now().duration_since(self.start))
    }
}

impl<C: Clock> fmt::Debug for SourceLimits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceLimits")
            .field("messages", &self.messages.is_some())
            .field("bytes", &self.bytes.as_ref().map(|b| b.bytes_per_second))
            .field("connections_per_minute", &self.connections_per_minute)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("max_tracked_sources", &self.max_tracked_sources)
            .finish_non_exhaustive()
    }
}

/// One admitted connection: holds its source's open-connection count (and keeps the source
/// tracked) until dropped.
#[must_use = "dropping the permit releases the connection slot at once"]
pub struct ConnectionPermit<C: Clock + Clone = DefaultClock> {
    /// None when nothing is tracked (no limit configured).
    held: Option<(Arc<SourceLimits<C>>, SourceKey)>,
}

impl<C: Clock + Clone> ConnectionPermit<C> {
    /// The source this connection counts against (None when no limit is configured).
    pub fn source(&self) -> Option<SourceKey> {
        self.held.as_ref().map(|(_, key)| *key)
    }
}

impl<C: Clock + Clone> Drop for ConnectionPermit<C> {
    fn drop(&mut self) {
        if let Some((limits, key)) = self.held.take() {
            let sources = limits
                .sources
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            // Always present: prune keeps sources with open connections.
            if let Some(source) = sources.get(&key) {
                source.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl<C: Clock + Clone> fmt::Debug for ConnectionPermit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("source", &self.source())
            .finish()
    }
}

/// The quota for a byte rate, and how many bytes one cell stands for: one second's worth of
/// burst, in cells of 1 byte up to a million bytes per second and coarser above. The refill
/// period is rounded up, so the effective rate never exceeds `bytes_per_second`.
fn byte_quota(bytes_per_second: u64) -> (Quota, u64) {
    let unit = bytes_per_second.div_ceil(MAX_BYTE_CELLS_PER_SECOND);
    let cells = bytes_per_second / unit; // 1..=1_000_000
    let burst =
        NonZeroU32::new(u32::try_from(cells).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    let period_nanos = (u128::from(unit) * NANOS_PER_SECOND).div_ceil(u128::from(bytes_per_second));
    let period = Duration::from_nanos(u64::try_from(period_nanos).unwrap_or(u64::MAX));
    let quota = Quota::with_period(period)
        .unwrap_or(Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    (quota, unit)
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
