//! The supervisor: builds every route from a validated [`Config`], binds all listeners before
//! serving any (a port in use fails the start, not one route later), reloads a new config
//! atomically, and drains on shutdown.
//!
//! Owns the cancellation tokens, the task trackers, the grace deadline and the set of running
//! routes. A reload binds every new listener first and only then swaps: each route's context
//! (rules, limits, TLS, upstream) is replaced for new connections while established ones finish
//! with the context they started with; routes removed stop accepting; store-and-forward queues
//! and accept-mode receivers stay open across reloads. On SIGTERM/SIGINT it stops accepting,
//! lets each session finish the message it is handling (its ack is written), then exits. Must
//! not know frame bytes or HL7 fields.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Delivery, OnUpstreamFailure, ReceiverRole, Route, SenderRole};
use crate::custody::Custody;
use crate::dispatch::Dispatch;
use crate::firewall::limits::SourceLimits;
use crate::inbound::listener;
use crate::route::{RouteContext, SharedContext};
use crate::upstream::Upstream;

/// A running guard: its listeners are bound and serving.
pub struct Guard {
    routes: Mutex<BTreeMap<String, RunningRoute>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    background_stop: CancellationToken,
    background: TaskTracker,
    grace: Duration,
    admin_addr: Option<SocketAddr>,
}

/// One route as it runs.
struct RunningRoute {
    ctx: SharedContext,
    /// Stops this route's accept loop (or dialer): cancelled when the route is removed or its
    /// listen address changes.
    stop: CancellationToken,
    /// Cancelled when this context is replaced (stops tasks that belong to one generation).
    generation: CancellationToken,
    sender: SenderRole,
    /// The bound listen address (`None` for a route that dials).
    bound: Option<SocketAddr>,
    /// Kept across reloads: the queue cannot be opened twice.
    custody: Option<Arc<Custody>>,
    /// Kept across reloads: receivers stay connected to the accept address.
    accepting: Option<(SocketAddr, Arc<Upstream>)>,
}

/// A route built for a (re)load, not yet serving.
struct Prepared {
    ctx: Arc<RouteContext>,
    listener: Option<TcpListener>,
    custody: Option<Arc<Custody>>,
    accepting: Option<(SocketAddr, Arc<Upstream>)>,
    /// The route's upstream, when it has `health_check` (probed while this config runs).
    probed: Option<Arc<Upstream>>,
    /// The route's listener and dialer are new (not kept from the running route).
    restart: bool,
}

/// What a reload compares to tell an updated route from an unchanged one: its settings, and the
/// certificates and CRLs it loaded (a certificate rotated under the same path counts).
fn fingerprint(route: &Route) -> String {
    let mut text = format!("{route:?}");
    for material in [
        route.tls.as_ref().map(|t| &t.material),
        route.upstream.tls.as_ref().map(|t| &t.material),
    ]
    .into_iter()
    .flatten()
    {
        text.push_str(&format!("{material:?}"));
    }
    text
}

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    /// Settings that were not applied (they need a restart).
    pub not_applied: Vec<String>,
}

impl Guard {
    /// Binds every route's listener, then starts serving them all.
    pub async fn start(config: Config) -> anyhow::Result<Guard> {
        crate::ops::metrics::install_panic_flag();
        for q in crate::custody::stranded::stranded_queues(&config) {
            tracing::warn!(queue = %q.dir.display(), pending = q.pending, "{}", crate::custody::stranded::warning(&q));
        }
        {
            // In the background: a slow or unreachable NATS never delays the listeners.
            let config = config.clone();
            tokio::spawn(async move {
                for s in crate::custody::stranded::stranded_streams(&config).await {
                    tracing::warn!(stream = %s.stream, pending = s.pending, dead_letters = s.dead, "{}", crate::custody::stranded::stream_warning(&s));
                }
            });
        }
        let admin = match &config.admin {
            Some(admin) => Some(crate::ops::admin::bind(admin.listen).with_context(|| {
                format!(
                    "admin: cannot listen on {} (is another process using the port?)",
                    admin.listen
                )
            })?),
            None => None,
        };
        let guard = Guard {
            routes: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            // Custody drainers and receiver listeners stop only after every session has
            // finished, so no message is appended to a queue that is already closed.
            background_stop: CancellationToken::new(),
            background: TaskTracker::new(),
            grace: config.shutdown_grace,
            admin_addr: match &admin {
                Some(listener) => Some(listener.local_addr()?),
                None => None,
            },
        };
        guard.apply(config).await?;
        if let Some(listener) = admin {
            if let Some(addr) = guard.admin_addr {
                tracing::info!(admin = %addr, "admin endpoint listening (/metrics, /healthz, /readyz)");
            }
            guard.background.spawn(crate::ops::admin::serve(
                listener,
                guard.background_stop.clone(),
            ));
        }
        crate::ops::metrics::set_serving(true);
        Ok(guard)
    }

    /// Applies a new, validated config: new listeners are bound first (any failure leaves the
    /// running config untouched), then every route's context is swapped. Established
    /// connections finish with the settings they started with.
    pub async fn reload(&self, config: Config) -> anyhow::Result<ReloadSummary> {
        let result = self.apply(config).await;
        crate::ops::metrics::config_reload(result.is_ok());
        result
    }

    async fn apply(&self, config: Config) -> anyhow::Result<ReloadSummary> {
        let mut summary = ReloadSummary::default();
        crate::ops::audit::set_log_payloads(config.log_payloads);
        crate::ops::metrics::set_pki_dates(pki_dates(&config));
        if config.log_payloads {
            tracing::warn!("log_payloads: true: message bodies are written to the trace-level log (target mllp_guard::payload); this logs patient data");
        }
        let named_upstreams: Arc<BTreeMap<String, Arc<Upstream>>> = Arc::new(
            config
                .upstreams
                .iter()
                .map(|(name, cfg)| {
                    let label: Arc<str> = Arc::from(format!("upstreams.{name}").as_str());
                    (name.clone(), Arc::new(Upstream::new(label, cfg.clone())))
                })
                .collect(),
        );
        // 1. Build every route; bind what is new. Nothing runs yet.
        let mut prepared = Vec::with_capacity(config.routes.len());
        {
            let running = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            for route in config.routes {
                let old = running.get(&route.name);
                let name = route.name.clone();
                match self.prepare(route, old, &named_upstreams, &mut summary) {
                    Ok(p) => prepared.push(p),
                    // One route's broken queue must not take the others down: it stays down
                    // (not listening, named by /readyz), the others serve.
                    Err(err) => match err.downcast::<QueueUnavailable>() {
                        Ok(down) => {
                            tracing::error!(route = %name, error = %down.error, "route is down: its custody queue cannot be opened; the other routes serve (fix the queue, e.g. `mllp-guard queue salvage`, then reload or restart)");
                            crate::ops::metrics::set_route_down(&name, Some(down.to_string()));
                            summary
                                .not_applied
                                .push(format!("route {name}: down ({down})"));
                        }
                        Err(err) => return Err(err),
                    },
                }
            }
        }
        // 2. Swap.
        let mut running = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let first_load = running.is_empty();
        let keep: Vec<String> = prepared.iter().map(|p| p.ctx.route.name.clone()).collect();
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !keep.contains(name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old) = running.remove(&name) {
                tracing::info!(route = %name, "route removed by the new config; it stops accepting (open connections finish)");
                old.stop.cancel();
                old.generation.cancel();
                summary.removed.push(name);
            }
        }
        for p in prepared {
            let name = p.ctx.route.name.clone();
            // Ends with this config (a reload) or with the guard (shutdown): what runs under it
            // (pool refresh, health checks) must not hold the shutdown up to the grace period.
            let generation = self.shutdown.child_token();
            if let (Some(upstream), Some(check)) =
                (p.probed.clone(), p.ctx.route.upstream.health_check)
            {
                let stop = generation.clone();
                self.tracker
                    .spawn(async move { upstream.health_checks(check, stop).await });
            }
            if let Dispatch::Forward { upstream, .. } = &p.ctx.dispatch {
                if upstream.reopens_at_once() {
                    let (upstream, stop) = (upstream.clone(), generation.clone());
                    self.tracker
                        .spawn(async move { upstream.keep_pool_fresh(stop).await });
                }
            }
            match running.get_mut(&name) {
                Some(current) if !p.restart => {
                    if fingerprint(&current.ctx.load().route) != fingerprint(&p.ctx.route) {
                        summary.updated.push(name);
                    }
                    current.ctx.store(p.ctx.clone());
                    current.generation.cancel();
                    current.generation = generation;
                    current.custody = p.custody;
                    current.accepting = p.accepting;
                }
                current => {
                    if let Some(old) = current {
                        old.stop.cancel();
                        old.generation.cancel();
                        summary.updated.push(name.clone());
                    } else if !first_load {
                        summary.added.push(name.clone());
                    }
                    let started = self.serve_route(p, generation)?;
                    running.insert(name, started);
                }
            }
        }
        Ok(summary)
    }

    /// Builds one route's context, binding its listener unless the running route `old` keeps
    /// the same one, and reusing `old`'s queue and receiver listener.
    fn prepare(
        &self,
        route: Route,
        old: Option<&RunningRoute>,
        named_upstreams: &Arc<BTreeMap<String, Arc<Upstream>>>,
        summary: &mut ReloadSummary,
    ) -> anyhow::Result<Prepared> {
        let restart = old.is_none_or(|old| {
            old.sender != route.sender || old.ctx.load().route.transparent != route.transparent
        });
        let listener = match (&route.sender, restart) {
            (SenderRole::Listen(addr), true) => Some(
                crate::net::bind::bind_with(*addr, route.transparent).with_context(|| {
                    format!(
                        "route {}: cannot listen on {addr} (is another process using the port?)",
                        route.name
                    )
                })?,
            ),
            _ => None,
        };
        let name: Arc<str> = Arc::from(route.name.as_str());
        // An accept-mode receiver keeps its listener (and its connected receivers) when the
        // accept address is unchanged.
        let accepting = match (&route.upstream.role, old.and_then(|o| o.accepting.as_ref())) {
            (ReceiverRole::Accept { listen, .. }, Some((addr, upstream)))
                if listen == addr || listen.port() == 0 =>
            {
                Some((*addr, upstream.clone()))
            }
            (ReceiverRole::Accept { .. }, _) => {
                let upstream = Upstream::new(name.clone(), route.upstream.clone());
                let receivers = upstream.bind_accept().with_context(|| {
                    format!(
                        "route {}: cannot listen for the receiver on {} (is another process using the port?)",
                        route.name, route.upstream.role
                    )
                })?;
                let upstream = Arc::new(upstream);
                match receivers {
                    Some(receivers) => {
                        let addr = receivers.local_addr()?;
                        if let ReceiverRole::Accept {
                            allow: crate::firewall::policy::Allowlist::Any,
                            ..
                        } = &route.upstream.role
                        {
                            tracing::warn!(route = %name, accept = %addr, "upstream.accept admits receivers from any address; set upstream.allow to the receiver's address");
                        }
                        tracing::info!(route = %name, accept = %addr, "waiting for the receiver to connect in");
                        self.background.spawn(
                            upstream.accept_receivers(receivers, self.background_stop.clone()),
                        );
                        Some((addr, upstream))
                    }
                    None => None,
                }
            }
            (ReceiverRole::Connect(_) | ReceiverRole::OriginalDestination, _) => None,
        };
        let upstream = match &accepting {
            Some((_, upstream)) => upstream.clone(),
            None => Arc::new(Upstream::new(name.clone(), route.upstream.clone())),
        };
        let probed = route
            .upstream
            .health_check
            .is_some()
            .then(|| upstream.clone());
        let (dispatch, custody) = match &route.delivery {
            Delivery::Forward => (
                Dispatch::Forward {
                    upstream,
                    on_upstream_failure: route.on_upstream_failure,
                },
                None,
            ),
            Delivery::StoreAndForward(cfg) => {
                let custody = match old.and_then(|o| o.custody.clone()) {
                    Some(custody) => {
                        summary.not_applied.push(format!(
                            "route {}: queue, ack_mode, retry and upstream settings of a store-and-forward route apply after a restart",
                            route.name
                        ));
                        custody
                    }
                    None => Custody::start(
                        name.clone(),
                        cfg.clone(),
                        upstream,
                        route.on_upstream_failure == OnUpstreamFailure::Close,
                        self.background_stop.clone(),
                        &self.background,
                    )
                    .map_err(|err| QueueUnavailable {
                        route: route.name.clone(),
                        error: err.to_string(),
                    })?,
                };
                (Dispatch::Custody(custody.clone()), Some(custody))
            }
        };
        // Per-source limits keep their counts when unchanged.
        let limits = match old.map(|o| o.ctx.load_full()) {
            Some(ctx) if ctx.route.limits == route.limits => ctx.limits.clone(),
            _ => Arc::new(SourceLimits::new(&route.limits)),
        };
        let ctx = Arc::new(RouteContext {
            metrics: crate::ops::metrics::RouteMetrics::new(name.clone()),
            name,
            route,
            dispatch,
            limits,
            named_upstreams: named_upstreams.clone(),
        });
        Ok(Prepared {
            ctx,
            listener,
            custody,
            accepting,
            probed,
            restart,
        })
    }

    /// Starts a prepared route's accept loop (or dialer) and its housekeeping.
    fn serve_route(
        &self,
        p: Prepared,
        generation: CancellationToken,
    ) -> anyhow::Result<RunningRoute> {
        crate::ops::metrics::set_route_down(&p.ctx.name, None);
        let stop = self.shutdown.child_token();
        let ctx: SharedContext = Arc::new(ArcSwap::new(p.ctx.clone()));
        {
            // Forget idle sources now and then, so limiter state stays bounded.
            let (ctx, stop) = (ctx.clone(), stop.clone());
            self.tracker.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => ctx.load().limits.prune(),
                    }
                }
            });
        }
        let route = &p.ctx.route;
        let bound = match (p.listener, &route.sender) {
            (Some(listener), _) => {
                let addr = listener.local_addr()?;
                tracing::info!(
                    route = %p.ctx.name,
                    listen = %addr,
                    tls = route.tls.is_some(),
                    mtls = route.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                    upstream = %p.ctx.dispatch.describe(),
                    allow = %route.allow,
                    "route listening"
                );
                self.tracker.spawn(listener::accept_loop(
                    listener,
                    ctx.clone(),
                    stop.clone(),
                    self.tracker.clone(),
                ));
                Some(addr)
            }
            (None, SenderRole::Dial(target)) => {
                tracing::info!(route = %p.ctx.name, dial = %target, upstream = %p.ctx.dispatch.describe(), "route dialing its sender");
                self.tracker.spawn(crate::inbound::dialer::dial_loop(
                    target.clone(),
                    ctx.clone(),
                    stop.clone(),
                ));
                None
            }
            (None, SenderRole::Listen(_)) => None,
        };
        Ok(RunningRoute {
            ctx,
            stop,
            generation,
            sender: route.sender.clone(),
            bound,
            custody: p.custody,
            accepting: p.accepting,
        })
    }

    /// The address a route's listener is bound to (useful with port 0).
    pub fn local_addr(&self, route: &str) -> Option<SocketAddr> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(route).and_then(|r| r.bound)
    }

    /// The address the admin endpoint is bound to, if `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address a route's upstream accepts its receiver on (`upstream.accept`).
    pub fn receiver_addr(&self, route: &str) -> Option<SocketAddr> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .get(route)
            .and_then(|r| r.accepting.as_ref())
            .map(|(addr, _)| *addr)
    }

    /// Every listening route and its bound address, by route name.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .filter_map(|(name, r)| r.bound.map(|addr| (name.clone(), addr)))
            .collect()
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
        crate::ops::metrics::set_serving(false);
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

/// Every certificate and CRL the config loaded, with its dates, for the metrics.
fn pki_dates(config: &Config) -> Vec<crate::ops::metrics::PkiDate> {
    use crate::ops::metrics::PkiDate;
    let mut materials = Vec::new();
    for route in &config.routes {
        if let Some(tls) = &route.tls {
            materials.push(&tls.material);
        }
        if let Some(tls) = &route.upstream.tls {
            materials.push(&tls.material);
        }
    }
    for upstream in config.upstreams.values() {
        if let Some(tls) = &upstream.tls {
            materials.push(&tls.material);
        }
    }
    let mut dates = Vec::new();
    for material in materials {
        for cert in &material.certificates {
            dates.push(PkiDate::Certificate {
                file: cert.path.display().to_string(),
                subject: cert.dates.subject.clone(),
                not_after: cert.dates.not_after,
            });
        }
        for (path, crl) in &material.crls {
            dates.push(PkiDate::Crl {
                file: path.display().to_string(),
                issuer: crl.issuer.clone(),
                next_update: crl.next_update,
            });
        }
    }
    dates
}

/// Runs the guard from the config at `path` until SIGTERM or SIGINT, then drains. SIGHUP, or a
/// change to the config file or any file it names (watched through their directories, so
/// Kubernetes' symlink swaps count), reloads it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let path = config.file.clone();
    let mut watched = crate::reload::Watch::new(&config.inputs);
    let guard = Guard::start(config).await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        let why = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = guard.stopped() => break,
            _ = hup.recv() => "SIGHUP",
            _ = watched.changed() => "a watched file changed",
        };
        if let Some(inputs) = reload_from(&guard, &path, why).await {
            watched = crate::reload::Watch::new(&inputs);
        }
    }
    tracing::info!("shutdown requested; no longer accepting, finishing in-flight messages");
    guard.stop().await;
    Ok(())
}

/// Loads and applies the config at `path`; on any error logs it and keeps the running config.
/// Returns the new config's input files when it was applied.
async fn reload_from(
    guard: &Guard,
    path: &std::path::Path,
    why: &str,
) -> Option<Vec<std::path::PathBuf>> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            crate::ops::metrics::config_reload(false);
            tracing::error!(config = %path.display(), trigger = why, errors = errors.0.len(), "reload refused: the new config is invalid; the running config stays in force");
            for error in &errors.0 {
                tracing::error!("{error}");
            }
            return None;
        }
    };
    let inputs = config.inputs.clone();
    match guard.reload(config).await {
        Ok(summary) => {
            let names = |routes: &[String]| {
                if routes.is_empty() {
                    "none".to_string()
                } else {
                    routes.join(", ")
                }
            };
            tracing::info!(config = %path.display(), trigger = why, added = %names(&summary.added), removed = %names(&summary.removed), updated = %names(&summary.updated), "config reloaded");
            for note in &summary.not_applied {
                tracing::warn!("{note}");
            }
            Some(inputs)
        }
        Err(err) => {
            tracing::error!(config = %path.display(), trigger = why, error = format!("{err:#}"), "reload failed; the running config stays in force");
            None
        }
    }
}

/// A route's custody queue could not be opened: that route is down, the others serve.
#[derive(Debug, thiserror::Error)]
#[error("its custody queue cannot be opened: {error}")]
struct QueueUnavailable {
    route: String,
    error: String,
}
