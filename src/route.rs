//! One route as it runs: the context every connection of the route reads ([`RouteContext`]),
//! the handle a reload swaps ([`SharedContext`]), how a reload reaches the connections already
//! open ([`Generation`]), and who is on the other end of a connection ([`Peer`]).
//!
//! Owns these shapes only, so that the supervisor, the inbound side and the junction can share
//! them without importing each other. Must not know sockets or how a route is served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Route;
use crate::custody::SenderId;
use crate::dispatch::Dispatch;
use crate::firewall::limits::SourceLimits;
use crate::net::proxy_protocol::Origin;
use crate::upstream::Upstream;

/// Everything a session needs from its route.
pub struct RouteContext {
    pub name: Arc<str>,
    /// The route's metric handles (and its name again), for the audit line and its count.
    pub metrics: crate::ops::metrics::RouteMetrics,
    pub route: Route,
    pub dispatch: Dispatch,
    /// Per-source connection and message limits (tracks nothing when none are configured).
    pub limits: Arc<SourceLimits>,
    /// The named upstreams rules may route to (`upstreams:` at the top of the config).
    pub named_upstreams: Arc<BTreeMap<String, Arc<Upstream>>>,
    /// Paused by the operator (kept across reloads; shared with the route's custody drainer).
    pub paused: Arc<AtomicBool>,
    /// This context's place in the route's succession of configs: open connections follow it.
    pub generation: Generation,
    /// Fires when `shutdown_grace` ends with messages still in flight (the whole guard's).
    pub abandon: Arc<Abandon>,
}

impl RouteContext {
    /// Whether the operator paused this route.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// A paused forward route takes no new connections (a store-and-forward one keeps
    /// accepting and queueing; only its delivery stops).
    pub fn refuses_while_paused(&self) -> bool {
        self.is_paused() && matches!(self.dispatch, Dispatch::Forward { .. })
    }
}

/// The end of `shutdown_grace`: messages still in flight then are abandoned, each with an audit
/// line, and counted for the guard's last ERROR line.
#[derive(Default)]
pub struct Abandon {
    now: CancellationToken,
    count: AtomicUsize,
}

impl Abandon {
    /// `shutdown_grace` is over: every message still in flight is abandoned.
    pub fn now(&self) {
        self.now.cancel();
    }

    /// Resolves when messages in flight must be abandoned.
    pub async fn due(&self) {
        self.now.cancelled().await
    }

    /// One message was abandoned.
    pub fn counted(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many messages were abandoned.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// How a reload reaches the connections already open: a replaced context names its successor
/// and wakes its sessions; each checks itself against the successor (allow, TLS identity,
/// `client_ca`) after its in-flight message, then carries on under it or closes, and reports
/// which to the successor, whose reload line counts them.
#[derive(Default)]
pub struct Generation {
    /// The context that replaced this one (set once, by the reload that did it).
    successor: OnceLock<Arc<RouteContext>>,
    /// Cancelled when this context is replaced (or its route removed or restarted).
    replaced: CancellationToken,
    /// Set just before `replaced` is cancelled, and read without a lock: every session of the
    /// route asks between messages, from every worker thread, and the token's own check takes
    /// its mutex (a cache line all workers wrote for every message: 2% of the guard's CPU in
    /// `perf` at 64 connections, issue 22).
    replaced_flag: Arc<AtomicBool>,
    /// Sessions open on the route, whatever context they run under (shared across reloads).
    open: Arc<AtomicUsize>,
    /// Sessions that moved to this context from an earlier one: checked, and of them closed.
    rechecked: AtomicUsize,
    closed: AtomicUsize,
}

impl Generation {
    /// The next context's generation: the same count of open sessions.
    pub fn next(&self) -> Generation {
        Generation {
            open: self.open.clone(),
            ..Generation::default()
        }
    }

    /// Replaces this context by `next` for the sessions open under it; returns how many
    /// sessions the route has open.
    pub fn replace_by(&self, next: Arc<RouteContext>) -> usize {
        // Counted before the sessions wake: one that is closed at once is still counted.
        let open = self.open.load(Ordering::Relaxed);
        let _ = self.successor.set(next);
        self.wake_sessions();
        open
    }

    /// The route stops (removed, or its listener restarted): no successor, nothing to follow.
    pub fn end(&self) {
        self.wake_sessions();
    }

    /// The flag first: a session that reads it unset is still registered with the token, and
    /// the token's cancel wakes it.
    fn wake_sessions(&self) {
        self.replaced_flag.store(true, Ordering::Release);
        self.replaced.cancel();
    }

    /// Resolves when this context has been replaced or ended (cancel-safe).
    pub fn replaced(&self) -> Replaced {
        Replaced {
            flag: self.replaced_flag.clone(),
            wait: self.replaced.clone().cancelled_owned(),
            registered: None,
        }
    }

    pub fn is_replaced(&self) -> bool {
        self.replaced_flag.load(Ordering::Acquire)
    }

    /// The newest context after this one (`None` when there is none: ended, or not replaced).
    pub fn newest(&self) -> Option<Arc<RouteContext>> {
        let mut newest = self.successor.get()?.clone();
        while let Some(next) = newest.generation.successor.get() {
            newest = next.clone();
        }
        Some(newest)
    }

    /// A session opened; it counts until the returned value is dropped.
    pub fn session_opened(&self) -> OpenSession {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenSession(self.open.clone())
    }

    /// A session that ran under this context was checked against the newest one; `closed`:
    /// it was not admitted. Counted by every context after this one (two reloads in quick
    /// succession each count the session they reached).
    pub fn rechecked(&self, closed: bool) {
        let mut next = self.successor.get();
        while let Some(ctx) = next {
            let counts = &ctx.generation;
            if closed {
                counts.closed.fetch_add(1, Ordering::Relaxed);
            }
            counts.rechecked.fetch_add(1, Ordering::Relaxed);
            next = counts.successor.get();
        }
    }

    /// Waits (up to `limit`) until `expected` sessions have been checked against this context;
    /// returns how many were checked and how many of them closed.
    pub async fn recheck_counts(&self, expected: usize, limit: Duration) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.rechecked.load(Ordering::Relaxed) < expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (
            self.rechecked.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
        )
    }
}

/// One open session in its route's count.
pub struct OpenSession(Arc<AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A route's current context: swapped by a reload, read by each new connection.
pub type SharedContext = Arc<ArcSwap<RouteContext>>;

/// Who is on the other end of a session: address and the identities of its TLS certificate.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client: the connection's peer, or the one its PROXY protocol header names.
    pub addr: SocketAddr,
    /// The address the client connected to (ours, or the balancer's per its PROXY header).
    pub local: SocketAddr,
    /// The load balancer the connection really came from, when a PROXY header named `addr`.
    pub proxy: Option<SocketAddr>,
    /// SAN DNS/URI names then CN of the client certificate; empty without one.
    pub identities: Vec<String>,
}

impl Peer {
    /// The balancer, as a log field (absent for a direct connection).
    pub fn proxy(&self) -> Option<tracing::field::DisplayValue<SocketAddr>> {
        self.proxy.map(tracing::field::display)
    }

    /// The client and the address it connected to, for a PROXY header upstream.
    pub fn origin(&self) -> Origin {
        Origin {
            source: self.addr,
            destination: self.local,
        }
    }

    /// The sender as duplicate suppression tells senders apart: its TLS identity, else its
    /// address.
    pub fn sender_id(&self) -> SenderId<'_> {
        match self.identity() {
            Some(identity) => SenderId::Identity(identity),
            None => SenderId::Address(self.addr.ip()),
        }
    }

    /// The identity shown in logs: the first one.
    pub fn identity(&self) -> Option<&str> {
        self.identities.first().map(String::as_str)
    }
}

pin_project_lite::pin_project! {
    /// [`Generation::replaced`]: resolves when the context is replaced or its route ends.
    ///
    /// A session polls this at every wake-up. Polling the token's own future takes two locks on
    /// the route-wide token (its state, then its waiter list) each time, so this one registers
    /// with the token once per task and afterwards only reads the flag: the token still wakes
    /// the task when it is cancelled, and the flag is set before it is.
    pub struct Replaced {
        flag: Arc<AtomicBool>,
        #[pin]
        wait: tokio_util::sync::WaitForCancellationFutureOwned,
        // The waker the token's future was last polled with (it wakes this one).
        registered: Option<std::task::Waker>,
    }
}

impl std::future::Future for Replaced {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        if this.flag.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return std::task::Poll::Pending;
        }
        // The first poll, or one from another task: (re-)register with the token.
        let polled = this.wait.poll(cx);
        if polled.is_pending() {
            *this.registered = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use super::Generation;

    #[tokio::test]
    async fn a_session_waiting_for_a_reload_is_woken_by_it() {
        let generation = std::sync::Arc::new(Generation::default());
        let waiting = {
            let generation = generation.clone();
            tokio::spawn(async move { generation.replaced().await })
        };
        // Polled (and pending) first, so the wake-up is what ends the wait. (`end` and
        // `replace_by` signal the same way; a successor context is more than this test needs.)
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert!(!generation.is_replaced());
        generation.end();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(generation.is_replaced());
    }

    #[test]
    fn polled_again_with_the_same_waker_it_waits_without_re_registering_and_sees_the_end() {
        let generation = Generation::default();
        let mut replaced = pin!(generation.replaced());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(replaced.as_mut().poll(&mut cx).is_pending());
        assert!(replaced.as_mut().poll(&mut cx).is_pending());
        generation.end();
        assert_eq!(replaced.as_mut().poll(&mut cx), Poll::Ready(()));
        // Made after the end: ready at once.
        assert_eq!(pin!(generation.replaced()).poll(&mut cx), Poll::Ready(()));
    }

    #[tokio::test]
    async fn polled_from_another_task_it_registers_that_task() {
        let generation = std::sync::Arc::new(Generation::default());
        let mut replaced = Box::pin(generation.replaced());
        // First polled (and registered) here, then moved to a task that waits on it.
        let waker = std::task::Waker::noop();
        assert!(replaced
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        let waiting = tokio::spawn(replaced);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        generation.end();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the new task was registered and woken")
            .unwrap();
    }
}
