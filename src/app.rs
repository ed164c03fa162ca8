//! The supervisor: builds every route from a validated [`Config`], binds all listeners before
//! serving any (a port in use fails the start, not one route later), reloads a new config
//! atomically, and drains on shutdown.
//!
//! Owns the cancellation tokens, the task trackers, the grace deadline and the set of running
//! routes. A reload binds every new listener first (a listener whose address stays in the
//! config is handed over to the route that now has it, not bound again) and only then swaps:
//! each route's context (rules, limits, TLS, upstream) is replaced; open connections check
//! themselves against it after their in-flight message and follow it or close (see
//! [`crate::route::Generation`]); routes removed stop accepting; store-and-forward queues and
//! accept-mode receivers stay open across reloads. On SIGTERM/SIGINT it stops accepting, lets
//! each session finish the message it is handling (its ack is written), then exits. Must not
//! know frame bytes or HL7 fields.

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
use crate::route::{Abandon, Generation, RouteContext, SharedContext};
use crate::upstream::Upstream;

/// A running guard: its listeners are bound and serving.
pub struct Guard {
    routes: Arc<Mutex<BTreeMap<String, RunningRoute>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    background_stop: CancellationToken,
    background: TaskTracker,
    grace: Duration,
    /// Fired when `grace` ends with messages in flight.
    abandon: Arc<Abandon>,
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
    /// The listener (shared with its accept loop), to hand over to the route that takes its
    /// address at a reload (a renamed route, routes that swap ports).
    listener: Option<Arc<TcpListener>>,
    /// Kept across reloads: the queue cannot be opened twice.
    custody: Option<Arc<Custody>>,
    /// Kept across reloads: receivers stay connected to the accept address.
    accepting: Option<(SocketAddr, Arc<Upstream>)>,
}

/// A route built for a (re)load, not yet serving.
struct Prepared {
    ctx: Arc<RouteContext>,
    listener: Option<Arc<TcpListener>>,
    custody: Option<Arc<Custody>>,
    accepting: Option<(SocketAddr, Arc<Upstream>)>,
    /// The route's upstream, when it has `health_check` (probed while this config runs).
    probed: Option<Arc<Upstream>>,
    /// The address `listener` is bound to.
    bound: Option<SocketAddr>,
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

/// How long a reload waits for the connections open under a replaced context to check
/// themselves against the new one, for its log line (one in the middle of a message checks
/// itself after it, uncounted).
const RECHECK_REPORT_WAIT: Duration = Duration::from_millis(500);

/// How long the sessions get to write the audit lines of the messages they abandon when
/// `shutdown_grace` ends.
const ABANDON_WAIT: Duration = Duration::from_millis(500);

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    /// Connections open on the routes kept when the new config was applied.
    pub open: usize,
    /// Of them, how many checked themselves against the new config in time for the log line,
    /// and how many of those it no longer admitted (closed after their in-flight message). The
    /// rest check themselves after their in-flight message; each one closed logs why.
    pub rechecked: usize,
    pub closed: usize,
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
            routes: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            // Custody drainers and receiver listeners stop only after every session has
            // finished, so no message is appended to a queue that is already closed.
            background_stop: CancellationToken::new(),
            background: TaskTracker::new(),
            grace: config.shutdown_grace,
            abandon: Arc::new(Abandon::default()),
            admin_addr: match &admin {
                Some(listener) => Some(listener.local_addr()?),
                None => None,
            },
        };
        let admin_tls = config
            .admin
            .as_ref()
            .and_then(|a| a.tls.as_ref().map(|t| t.config.clone()));
        guard.apply(config).await?;
        if let Some(listener) = admin {
            if let Some(addr) = guard.admin_addr {
                tracing::info!(admin = %addr, tls = admin_tls.is_some(), "admin endpoint listening (/, /api/v1/, /metrics, /healthz, /readyz)");
                if !addr.ip().is_loopback() && admin_tls.is_none() {
                    tracing::warn!(admin = %addr, "the admin endpoint listens beyond loopback without TLS: its token and views cross the network in clear; set admin.tls or listen on 127.0.0.1");
                }
            }
            let table: Arc<dyn crate::ops::console::RouteTable> =
                Arc::new(Table(guard.routes.clone()));
            guard.background.spawn(crate::ops::admin::serve(
                listener,
                admin_tls,
                table,
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
        let notify = config.notify.clone();
        let admin = config.admin.clone();
        let max_buffered_bytes = config.max_buffered_bytes;
        // Process-wide settings change only once every route is built and bound: a reload
        // that fails changes nothing, `log_payloads` included (issue 28, finding 6).
        let log_payloads = config.log_payloads;
        let pki = pki_dates(&config);
        // Opened (reopened: a reload is how a rotated file is let go) before anything starts,
        // so that a file the guard cannot write fails the reload, or the start, whole.
        let audit_file = match &config.audit.file {
            Some(path) => Some((
                path.clone(),
                crate::ops::audit_sink::open(path).with_context(|| {
                    format!("audit.file: cannot open {} for appending", path.display())
                })?,
            )),
            None => None,
        };
        // What this reload starts before it knows it will apply (a new route's queue drainer,
        // a new receiver listener): stopped again when it fails.
        let started = self.background_stop.child_token();
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
                let name = route.name.clone();
                match self.prepare(route, &running, &named_upstreams, &started, &mut summary) {
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
                        Err(err) => {
                            started.cancel();
                            return Err(err);
                        }
                    },
                }
            }
        }
        // Webhooks of the new config before any route serves with it, so that its first
        // connection is told too.
        crate::ops::notify::configure(&notify);
        // 2. Swap.
        let followed = self.swap(prepared, &mut summary);
        if let Some(admin) = &admin {
            crate::ops::admin::configure(admin);
        }
        crate::wire::budget::Budget::shared().set_limit(max_buffered_bytes);
        crate::ops::audit::set_log_payloads(log_payloads);
        crate::ops::audit_sink::install(audit_file);
        crate::ops::metrics::set_pki_dates(pki);
        if log_payloads {
            tracing::warn!("log_payloads: true: message bodies are written to the trace-level log (target mllp_guard::payload); this logs patient data");
        }
        // 3. The connections open under a replaced context check themselves against the new
        // one (after their in-flight message): count them for the reload line, a short while.
        for (ctx, open) in followed {
            let (rechecked, closed) = ctx
                .generation
                .recheck_counts(open, RECHECK_REPORT_WAIT)
                .await;
            summary.rechecked += rechecked;
            summary.closed += closed;
            summary.open += open;
        }
        Ok(summary)
    }

    /// Swaps the prepared routes in: removed and restarted routes stop (their sessions close
    /// after their in-flight message), kept ones hand their open connections to the new
    /// context. Returns each new context with how many connections its route had open.
    fn swap(
        &self,
        prepared: Vec<Prepared>,
        summary: &mut ReloadSummary,
    ) -> Vec<(Arc<RouteContext>, usize)> {
        let mut followed = Vec::new();
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
                tracing::info!(route = %name, "route removed by the new config; it stops accepting and its open connections close after their in-flight message");
                old.ctx.load().generation.end();
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
                    let replaced = current.ctx.swap(p.ctx.clone());
                    let open = replaced.generation.replace_by(p.ctx.clone());
                    if open > 0 {
                        followed.push((p.ctx.clone(), open));
                    }
                    current.generation.cancel();
                    current.generation = generation;
                    current.custody = p.custody;
                    current.accepting = p.accepting;
                }
                current => {
                    if let Some(old) = current {
                        tracing::info!(route = %name, "route changes its listener or dial target; its open connections close after their in-flight message");
                        old.ctx.load().generation.end();
                        old.stop.cancel();
                        old.generation.cancel();
                        summary.updated.push(name.clone());
                    } else if !first_load {
                        summary.added.push(name.clone());
                    }
                    let serving = self.serve_route(p, generation);
                    running.insert(name, serving);
                }
            }
        }
        followed
    }

    /// Builds one route's context, binding its listener unless the running route of its name
    /// keeps the same one (or a running route listening on its address hands its listener
    /// over), and reusing that route's queue and receiver listener.
    fn prepare(
        &self,
        route: Route,
        running: &BTreeMap<String, RunningRoute>,
        named_upstreams: &Arc<BTreeMap<String, Arc<Upstream>>>,
        started: &CancellationToken,
        summary: &mut ReloadSummary,
    ) -> anyhow::Result<Prepared> {
        let old = running.get(&route.name);
        let restart = old.is_none_or(|old| {
            old.sender != route.sender || old.ctx.load().route.transparent != route.transparent
        });
        let listener = match (&route.sender, restart) {
            (SenderRole::Listen(addr), true) => {
                Some(match handed_over(running, *addr, route.transparent) {
                    Some((from, listener)) => {
                        tracing::info!(route = %route.name, listen = %addr, from = %from, "the listener on this address is handed over from the running route, not rebound");
                        listener
                    }
                    None => Arc::new(
                        crate::net::bind::bind_with(*addr, route.transparent).with_context(
                            || {
                                format!(
                                "route {}: cannot listen on {addr} (is another process using the port?)",
                                route.name
                            )
                            },
                        )?,
                    ),
                })
            }
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
                        self.background
                            .spawn(upstream.accept_receivers(receivers, started.clone()));
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
        // The operator's pause outlives reloads (and is the custody drainer's too).
        let paused = match old {
            Some(o) => o.ctx.load().paused.clone(),
            None => Arc::default(),
        };
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
                        paused.clone(),
                        started.clone(),
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
        // Connections open on a kept listener follow the new context; a new listener starts a
        // new count.
        let generation = match old {
            Some(old) if !restart => old.ctx.load().generation.next(),
            _ => Generation::default(),
        };
        let ctx = Arc::new(RouteContext {
            generation,
            abandon: self.abandon.clone(),
            metrics: crate::ops::metrics::RouteMetrics::new(name.clone()),
            name,
            route,
            dispatch,
            limits,
            named_upstreams: named_upstreams.clone(),
            paused,
        });
        let bound = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        Ok(Prepared {
            ctx,
            bound,
            listener,
            custody,
            accepting,
            probed,
            restart,
        })
    }

    /// Starts a prepared route's accept loop (or dialer) and its housekeeping.
    fn serve_route(&self, p: Prepared, generation: CancellationToken) -> RunningRoute {
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
        let listener = p.listener.clone();
        let bound = match (p.listener.zip(p.bound), &route.sender) {
            (Some((listener, addr)), _) => {
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
        RunningRoute {
            ctx,
            stop,
            generation,
            sender: route.sender.clone(),
            bound,
            listener,
            custody: p.custody,
            accepting: p.accepting,
        }
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
        if !drained {
            // Every message still in flight gets its audit line before the process ends.
            self.abandon.now();
            let _ = tokio::time::timeout(ABANDON_WAIT, self.tracker.wait()).await;
            let abandoned = self.abandon.count();
            if abandoned > 0 {
                tracing::error!(
                    abandoned,
                    grace = %humantime::format_duration(self.grace),
                    "shutdown_grace ended with messages in flight: {abandoned} abandoned (each has an audit line with outcome abandoned_at_shutdown); the receiver may have them, and a sender that resends will duplicate them"
                );
            }
        }
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

/// The listener of a running route bound to `addr` (as configured: never port 0) with the same
/// `transparent`, and that route's name: a route that takes the address over at a reload (a
/// renamed route, routes that swap ports) keeps the socket instead of binding it again, which
/// would fail while the guard itself holds it.
fn handed_over(
    running: &BTreeMap<String, RunningRoute>,
    addr: SocketAddr,
    transparent: bool,
) -> Option<(String, Arc<TcpListener>)> {
    if addr.port() == 0 {
        return None;
    }
    running.iter().find_map(|(name, r)| {
        let same =
            r.sender == SenderRole::Listen(addr) && r.ctx.load().route.transparent == transparent;
        same.then(|| r.listener.clone().map(|l| (name.clone(), l)))
            .flatten()
    })
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
    // systemd (Type=notify): every listener is bound and the config applied.
    crate::ops::systemd::ready(guard.routes.lock().map_or(0, |r| r.len()));
    if let Some(every) = crate::ops::systemd::watchdog_interval() {
        guard.background.spawn(crate::ops::systemd::watchdog(
            every,
            guard.background_stop.clone(),
        ));
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        let why = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = guard.stopped() => break,
            _ = hup.recv() => {
                // logrotate's convention: the audit file is reopened whatever the reload does.
                crate::ops::audit_sink::reopen();
                "SIGHUP"
            }
            _ = watched.changed() => "a watched file changed",
        };
        crate::ops::systemd::reloading();
        let applied = reload_from(&guard, &path, why).await;
        crate::ops::systemd::reloaded(applied.is_some());
        if let Some(inputs) = applied {
            watched = crate::reload::Watch::new(&inputs);
        }
    }
    crate::ops::systemd::stopping();
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
            let reasons: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            crate::ops::notify::config_rejected(&path.display().to_string(), &reasons);
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
            tracing::info!(config = %path.display(), trigger = why, added = %names(&summary.added), removed = %names(&summary.removed), updated = %names(&summary.updated), open_connections = summary.open, rechecked = summary.rechecked, closed = summary.closed, not_yet_rechecked = summary.open.saturating_sub(summary.rechecked), "config reloaded");
            for note in &summary.not_applied {
                tracing::warn!("{note}");
            }
            crate::ops::notify::config_reloaded(
                &path.display().to_string(),
                &summary.added,
                &summary.removed,
                &summary.updated,
            );
            Some(inputs)
        }
        Err(err) => {
            tracing::error!(config = %path.display(), trigger = why, error = format!("{err:#}"), "reload failed; the running config stays in force");
            crate::ops::notify::config_rejected(&path.display().to_string(), &[format!("{err:#}")]);
            None
        }
    }
}

/// The running routes as the operator's console sees them.
struct Table(Arc<Mutex<BTreeMap<String, RunningRoute>>>);

impl crate::ops::console::RouteTable for Table {
    fn handles(&self) -> Vec<crate::ops::console::RouteHandle> {
        let routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .values()
            .map(|r| crate::ops::console::RouteHandle {
                ctx: r.ctx.load_full(),
                bound: r.bound,
                custody: r.custody.clone(),
            })
            .collect()
    }
}

/// A route's custody queue could not be opened: that route is down, the others serve.
#[derive(Debug, thiserror::Error)]
#[error("its custody queue cannot be opened: {error}")]
struct QueueUnavailable {
    route: String,
    error: String,
}
