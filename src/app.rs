//! The supervisor: builds every route from a validated [`Config`], binds all listeners before
//! serving any (a port in use fails the start, not one route later), and drains on shutdown.
//!
//! Owns the cancellation token, the task tracker and the grace deadline: on SIGTERM/SIGINT it stops
//! accepting, lets each session finish the message it is handling (its ack is written), then
//! exits. Must not know frame bytes or HL7 fields.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Delivery, OnUpstreamFailure, ReceiverRole, SenderRole};
use crate::custody::Custody;
use crate::dispatch::Dispatch;
use crate::limits::SourceLimits;
use crate::listener;
use crate::session::RouteContext;
use crate::upstream::Upstream;

/// A running guard: its listeners are bound and serving.
pub struct Guard {
    bound: Vec<(Arc<str>, SocketAddr)>,
    /// Routes whose upstream accepts its receiver, and the address bound for it.
    accepting: Vec<(Arc<str>, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    background_stop: CancellationToken,
    background: TaskTracker,
    grace: Duration,
}

impl Guard {
    /// Binds every route's listener, then starts serving them all.
    pub async fn start(config: Config) -> anyhow::Result<Guard> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Custody drainers stop only after every session has finished, so no message is
        // appended to a queue that is already closed.
        let background_stop = CancellationToken::new();
        let background = TaskTracker::new();
        let named_upstreams: Arc<std::collections::BTreeMap<String, Arc<Upstream>>> = Arc::new(
            config
                .upstreams
                .iter()
                .map(|(name, cfg)| {
                    let label: Arc<str> = Arc::from(format!("upstreams.{name}").as_str());
                    (name.clone(), Arc::new(Upstream::new(label, cfg.clone())))
                })
                .collect(),
        );
        crate::metrics::install_panic_flag();
        let admin = match &config.admin {
            Some(admin) => {
                let listener = crate::admin::bind(admin.listen).with_context(|| {
                    format!(
                        "admin: cannot listen on {} (is another process using the port?)",
                        admin.listen
                    )
                })?;
                Some(listener)
            }
            None => None,
        };
        let mut senders = Vec::with_capacity(config.routes.len());
        let mut accepting = Vec::new();
        let mut receiver_listeners = Vec::new();
        for route in config.routes {
            let listener = match route.sender {
                SenderRole::Listen(addr) => Some(listener::bind(addr).with_context(|| {
                    format!(
                        "route {}: cannot listen on {addr} (is another process using the port?)",
                        route.name
                    )
                })?),
                SenderRole::Dial(_) => None,
            };
            let name: Arc<str> = Arc::from(route.name.as_str());
            let upstream = Upstream::new(name.clone(), route.upstream.clone());
            if let Some(receivers) = upstream.bind_accept().with_context(|| {
                format!(
                    "route {}: cannot listen for the receiver on {} (is another process using the port?)",
                    route.name, route.upstream.role
                )
            })? {
                let addr = receivers.local_addr()?;
                if let ReceiverRole::Accept {
                    allow: crate::policy::Allowlist::Any,
                    ..
                } = &route.upstream.role
                {
                    tracing::warn!(route = %name, accept = %addr, "upstream.accept admits receivers from any address; set upstream.allow to the receiver's address");
                }
                tracing::info!(route = %name, accept = %addr, "waiting for the receiver to connect in");
                accepting.push((name.clone(), addr));
                receiver_listeners.push(upstream.accept_receivers(receivers, background_stop.clone()));
            }
            let upstream = Arc::new(upstream);
            let dispatch = match &route.delivery {
                Delivery::Forward => {
                    if upstream.reopens_at_once() {
                        let (upstream, stop) = (upstream.clone(), shutdown.clone());
                        tracker.spawn(async move { upstream.keep_pool_fresh(stop).await });
                    }
                    Dispatch::Forward {
                        upstream,
                        on_upstream_failure: route.on_upstream_failure,
                    }
                }
                Delivery::StoreAndForward(custody) => Dispatch::Custody(
                    Custody::start(
                        name.clone(),
                        custody.clone(),
                        upstream,
                        route.on_upstream_failure == OnUpstreamFailure::Close,
                        background_stop.clone(),
                        &background,
                    )
                    .with_context(|| {
                        format!("route {}: cannot open its custody queue", route.name)
                    })?,
                ),
            };
            let limits = Arc::new(SourceLimits::new(&route.limits));
            {
                // Forget idle sources now and then, so limiter state stays bounded.
                let (limits, stop) = (limits.clone(), shutdown.clone());
                tracker.spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => limits.prune(),
                        }
                    }
                });
            }
            let ctx = Arc::new(RouteContext {
                name,
                route,
                dispatch,
                limits,
                named_upstreams: named_upstreams.clone(),
            });
            senders.push((listener, ctx));
        }
        for serve in receiver_listeners {
            background.spawn(serve);
        }
        let admin_addr = match admin {
            Some(listener) => {
                let addr = listener.local_addr()?;
                tracing::info!(admin = %addr, "admin endpoint listening (/metrics, /healthz, /readyz)");
                background.spawn(crate::admin::serve(listener, background_stop.clone()));
                Some(addr)
            }
            None => None,
        };
        let mut bound = Vec::with_capacity(senders.len());
        for (listener, ctx) in senders {
            let Some(listener) = listener else {
                let SenderRole::Dial(target) = ctx.route.sender.clone() else {
                    continue;
                };
                tracing::info!(route = %ctx.name, dial = %target, upstream = %ctx.dispatch.describe(), "route dialing its sender");
                tracker.spawn(crate::dialer::dial_loop(target, ctx, shutdown.clone()));
                continue;
            };
            let addr = listener.local_addr()?;
            tracing::info!(
                route = %ctx.name,
                listen = %addr,
                tls = ctx.route.tls.is_some(),
                mtls = ctx.route.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                upstream = %ctx.dispatch.describe(),
                allow = %ctx.route.allow,
                "route listening"
            );
            bound.push((ctx.name.clone(), addr));
            tracker.spawn(listener::accept_loop(
                listener,
                ctx,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        crate::metrics::set_serving(true);
        Ok(Guard {
            bound,
            accepting,
            admin_addr,
            shutdown,
            tracker,
            background_stop,
            background,
            grace: config.shutdown_grace,
        })
    }

    /// The address a route's listener is bound to (useful with port 0).
    pub fn local_addr(&self, route: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(name, _)| &**name == route)
            .map(|(_, addr)| *addr)
    }

    /// The address the admin endpoint is bound to, if `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address a route's upstream accepts its receiver on (`upstream.accept`).
    pub fn receiver_addr(&self, route: &str) -> Option<SocketAddr> {
        self.accepting
            .iter()
            .find(|(name, _)| &**name == route)
            .map(|(_, addr)| *addr)
    }

    /// Every route and its bound address, in config order.
    pub fn bound(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.bound.iter().map(|(name, addr)| (&**name, *addr))
    }

    /// A token that stops the guard when cancelled (the same as calling [`Guard::stop`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when a shutdown has been requested.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Stops accepting, waits up to the grace period for in-flight messages, and returns whether
    /// every session finished in time (the rest are abandoned when the runtime ends).
    pub async fn stop(self) -> bool {
        let deadline = tokio::time::Instant::now() + self.grace;
        crate::metrics::set_serving(false);
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        // Then custody: each drainer finishes its delivery attempt and closes its queue.
        self.background_stop.cancel();
        self.background.close();
        let drained = drained
            && tokio::time::timeout_at(deadline, self.background.wait())
                .await
                .is_ok();
        if drained {
            tracing::info!("all connections drained; stopped");
        } else {
            tracing::warn!(
                grace = %humantime::format_duration(self.grace),
                "grace period over with connections still open; stopping anyway"
            );
        }
        drained
    }
}

/// Runs the guard until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let guard = Guard::start(config).await?;
    tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            tracing::info!("shutdown requested; no longer accepting, finishing in-flight messages");
        }
        _ = guard.stopped() => {}
    }
    guard.stop().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
