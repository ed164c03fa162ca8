//! One route as it runs: the context every connection of the route reads ([`RouteContext`]),
//! the handle a reload swaps ([`SharedContext`]), and who is on the other end of a connection
//! ([`Peer`]).
//!
//! Owns these shapes only, so that the supervisor, the inbound side and the junction can share
//! them without importing each other. Must not know sockets or how a route is served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

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
