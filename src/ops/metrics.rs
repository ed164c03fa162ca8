//! The guard's Prometheus metrics: one registry per process, names following Prometheus
//! conventions (`mllp_guard_..._total`, `_seconds`, `_bytes`), and small recording functions the
//! data path calls.
//!
//! Owns metric names, help texts, label sets and bucket layouts, plus the process-wide health
//! flags `/healthz` and `/readyz` read (a panic anywhere; upstream reachability; a queue that
//! cannot write). Label values are route names, upstream names, rule names, ack codes and fixed
//! reason labels: never anything taken from a message. Must not know sockets or HL7 parsing; the
//! HTTP side is [`crate::ops::admin`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::queue::QueueStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    route: String,
    direction: &'static str,
    outcome: &'static str,
    ack: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    route: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    route: String,
    direction: &'static str,
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_with_total_in_help_and_type() {
        let open = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{r=\"1\"} 2\n# HELP b_seconds T.\n# TYPE b_seconds histogram\n# UNIT b_seconds seconds\nb_seconds_sum 1\n# EOF\n";
        assert_eq!(
            super::to_prometheus_text(open),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total{r=\"1\"} 2\n# HELP b_seconds T.\n# TYPE b_seconds histogram\nb_seconds_sum 1\n"
        );
    }
}

fn latency_histogram() -> Histogram {
    // 100 us to about 52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric family of the guard.
struct Metrics {
    registry: Registry,
    connections_accepted: Family<RouteLabel, Counter>,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_closed: Family<ReasonLabels, Counter>,
    queue_damaged_records: Family<RouteLabel, Counter>,
    jetstream_stream_lost: Family<RouteLabel, Counter>,
    jetstream_lost_messages: Family<RouteLabel, Counter>,
    route_up: Family<RouteLabel, Gauge>,
    dead_letters_full: Family<RouteLabel, Gauge>,
    route_paused: Family<RouteLabel, Gauge>,
    connections_open: Family<RouteLabel, Gauge>,
    tls_handshake_failures: Family<ReasonLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    message_bytes: Family<BytesLabels, Counter>,
    message_duration: Family<RouteLabel, Histogram>,
    ack_duration: Family<UpstreamLabel, Histogram>,
    rule_rejections: Family<RuleLabels, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    control_id_reused: Family<RouteLabel, Counter>,
    upstream_up: Family<UpstreamLabel, Gauge>,
    upstream_connects: Family<UpstreamLabel, Counter>,
    upstream_connect_failures: Family<UpstreamLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    webhook_deliveries: Family<WebhookLabels, Counter>,
    webhook_dropped: Family<WebhookLabels, Counter>,
    audit_write_failures: Counter,
}

/// A webhook (its URL without query) and a result (`delivered`) or drop reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::default();
        let m = Metrics {
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            queue_damaged_records: Family::default(),
            jetstream_stream_lost: Family::default(),
            jetstream_lost_messages: Family::default(),
            route_up: Family::default(),
            dead_letters_full: Family::default(),
            route_paused: Family::default(),
            connections_open: Family::default(),
            tls_handshake_failures: Family::default(),
            messages: Family::default(),
            message_bytes: Family::default(),
            message_duration: Family::new_with_constructor(latency_histogram),
            ack_duration: Family::new_with_constructor(latency_histogram),
            rule_rejections: Family::default(),
            rate_limited: Family::default(),
            control_id_reused: Family::default(),
            upstream_up: Family::default(),
            upstream_connects: Family::default(),
            upstream_connect_failures: Family::default(),
            config_reloads: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_dropped: Family::default(),
            audit_write_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "mllp_guard_connections_accepted",
            "Sender connections admitted, by route",
            m.connections_accepted.clone(),
        );
        registry.register(
            "mllp_guard_connections_refused",
            "Sender connections refused, by route and reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "mllp_guard_connections_closed",
            "Sender connections closed, by route and why (send_timeout: the sender did not read its acks)",
            m.connections_closed.clone(),
        );
        registry.register(
            "mllp_guard_queue_damaged_records",
            "Acknowledged messages lost to damaged queue bytes (set aside under <queue>/damaged/), by route",
            m.queue_damaged_records.clone(),
        );
        registry.register(
            "mllp_guard_jetstream_stream_lost",
            "Times a route's JetStream stream or consumer was found lost (gone, made again, sequence moved backwards) and made again, by route",
            m.jetstream_stream_lost.clone(),
        );
        registry.register(
            "mllp_guard_jetstream_lost_messages",
            "Acknowledged messages (pending and dead letters) that were in a lost JetStream stream, by route",
            m.jetstream_lost_messages.clone(),
        );
        registry.register(
            "mllp_guard_queue_dead_letters_full",
            "1 while a route's dead letters are full (queue.dead_letters) and it refuses new messages",
            m.dead_letters_full.clone(),
        );
        registry.register(
            "mllp_guard_route_paused",
            "1 while the operator has paused a route (POST /api/v1/routes/NAME/pause)",
            m.route_paused.clone(),
        );
        registry.register(
            "mllp_guard_route_up",
            "1 while a route serves, 0 when it could not start (its queue cannot be opened)",
            m.route_up.clone(),
        );
        registry.register(
            "mllp_guard_connections_open",
            "Sender connections open now, by route",
            m.connections_open.clone(),
        );
        registry.register(
            "mllp_guard_tls_handshake_failures",
            "TLS handshakes with senders that failed, by route and reason",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "mllp_guard_messages",
            "Messages answered, by route, direction (from_sender, to_sender), outcome and ack code",
            m.messages.clone(),
        );
        registry.register_with_unit(
            "mllp_guard_message",
            "Message payload bytes, by route and direction (in = received by the guard, out = passed on to the other side)",
            Unit::Bytes,
            m.message_bytes.clone(),
        );
        registry.register_with_unit(
            "mllp_guard_message_duration",
            "Time from a whole message to its answer, by route",
            Unit::Seconds,
            m.message_duration.clone(),
        );
        registry.register_with_unit(
            "mllp_guard_upstream_ack_duration",
            "Time from sending a message upstream to its ack, by upstream",
            Unit::Seconds,
            m.ack_duration.clone(),
        );
        registry.register(
            "mllp_guard_rule_rejections",
            "Messages rejected or dropped by a rule, by route and rule",
            m.rule_rejections.clone(),
        );
        registry.register(
            "mllp_guard_rate_limited",
            "Messages refused by a rate limit, by route",
            m.rate_limited.clone(),
        );
        registry.register(
            "mllp_guard_control_id_reused",
            "Messages taken into custody whose sender, MSH-3, MSH-4 and MSH-10 match an earlier message of the duplicate window with another body, by route",
            m.control_id_reused.clone(),
        );
        registry.register(
            "mllp_guard_upstream_up",
            "1 when the last connection attempt to the upstream succeeded, 0 when it failed",
            m.upstream_up.clone(),
        );
        registry.register(
            "mllp_guard_upstream_connects",
            "Upstream connections opened, by upstream",
            m.upstream_connects.clone(),
        );
        registry.register(
            "mllp_guard_upstream_connect_failures",
            "Failed attempts to connect to the upstream, by upstream",
            m.upstream_connect_failures.clone(),
        );
        registry.register(
            "mllp_guard_config_reloads",
            "Config reloads (SIGHUP or a watched file), by result (success, failure)",
            m.config_reloads.clone(),
        );
        for result in ["success", "failure"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "mllp_guard_webhook_deliveries",
            "Events a webhook answered with 2xx, by webhook",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "mllp_guard_webhook_dropped",
            "Events never delivered to a webhook, by webhook and reason (queue_full: max_pending events were waiting; gave_up: every attempt failed)",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "mllp_guard_audit_write_failures",
            "Times the audit file (audit.file) refused a write (a full disk, an I/O error); its lines are held and retried",
            m.audit_write_failures.clone(),
        );
        registry.register_collector(Box::new(QueueCollector));
        registry.register_collector(Box::new(PkiCollector));
        registry.register_collector(Box::new(BudgetCollector));
        Metrics { registry, ..m }
    })
}

/// The whole registry in the Prometheus text exposition format (0.0.4), which every scraper and
/// `promtool check metrics` read.
pub fn render() -> String {
    let mut open_metrics = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &metrics().registry);
    to_prometheus_text(&open_metrics)
}

/// prometheus-client writes OpenMetrics: a counter's HELP and TYPE name the family without
/// `_total`, units get `# UNIT` lines, and the text ends with `# EOF`. The Prometheus text
/// format names the counter's samples (`..._total`) in HELP and TYPE and has neither of the
/// others; the samples themselves are the same.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The audit file refused a write (counted once per failing episode).
pub fn audit_write_failed() {
    metrics().audit_write_failures.inc();
}

pub fn config_reload(ok: bool) {
    let result = if ok { "success" } else { "failure" };
    metrics()
        .config_reloads
        .get_or_create(&ResultLabel { result })
        .inc();
}

pub fn connection_accepted(route: &str) {
    let m = metrics();
    let label = RouteLabel {
        route: route.to_string(),
    };
    m.connections_accepted.get_or_create(&label).inc();
}

/// A sender connection is open while the returned guard lives.
pub fn connection_open(route: &str) -> OpenConnection {
    let gauge = metrics()
        .connections_open
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .clone();
    gauge.inc();
    OpenConnection(gauge)
}

/// Decrements the open-connections gauge when dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn connection_refused(route: &str, reason: &'static str) {
    metrics()
        .connections_refused
        .get_or_create(&ReasonLabels {
            route: route.to_string(),
            reason,
        })
        .inc();
}

/// A sender connection ended; `reason` is a short label (`peer_closed`, `idle_timeout`,
/// `send_timeout`, ...).
pub fn connection_closed(route: &str, reason: &'static str) {
    metrics()
        .connections_closed
        .get_or_create(&ReasonLabels {
            route: route.to_string(),
            reason,
        })
        .inc();
}

/// `lost` acknowledged messages were in damaged queue bytes set aside.
pub fn queue_damaged_records(route: &str, lost: u64) {
    metrics()
        .queue_damaged_records
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .inc_by(lost);
}

/// A route's JetStream stream (or consumer) was lost, with `messages` acknowledged messages in it.
pub fn jetstream_stream_lost(route: &str, messages: u64) {
    let label = RouteLabel {
        route: route.to_string(),
    };
    let m = metrics();
    m.jetstream_stream_lost.get_or_create(&label).inc();
    m.jetstream_lost_messages
        .get_or_create(&label)
        .inc_by(messages);
}

pub fn tls_handshake_failed(route: &str, reason: &'static str) {
    metrics()
        .tls_handshake_failures
        .get_or_create(&ReasonLabels {
            route: route.to_string(),
            reason,
        })
        .inc();
}

/// One route's message metrics, resolved when the route starts, so that counting a message on
/// the data path is a few atomic adds instead of labelled lookups (each one hashing the labels
/// under a lock and cloning the route name; they were ~1% of the guard's CPU per message in the
/// issue 7 profile). The outcomes most messages take (`forwarded` or `queued`, from the sender)
/// are resolved on first use per ack code; any other outcome goes through the labelled family.
pub struct RouteMetrics {
    name: Arc<str>,
    bytes_in: Counter,
    bytes_out: Counter,
    duration: Histogram,
    /// `from_sender` messages by [`hot_slot`].
    hot: [OnceLock<Counter>; HOT_SLOTS],
    /// Messages since start by ack code (the console's view; kept across reloads).
    by_ack: Arc<AckCounts>,
}

/// A route's messages since start, by ack code in [`HOT_ACKS`] order.
pub type AckCounts = [std::sync::atomic::AtomicU64; HOT_ACKS.len()];

fn ack_counts() -> &'static Mutex<BTreeMap<String, Arc<AckCounts>>> {
    static COUNTS: OnceLock<Mutex<BTreeMap<String, Arc<AckCounts>>>> = OnceLock::new();
    COUNTS.get_or_init(Mutex::default)
}

/// A route's messages since start by ack code (`AA`, ..., `none`), for the console.
pub fn messages_by_ack(route: &str) -> BTreeMap<&'static str, u64> {
    let counts = ack_counts().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = BTreeMap::new();
    if let Some(c) = counts.get(route) {
        for (code, n) in HOT_ACKS.iter().zip(c.iter()) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.insert(*code, n);
            }
        }
    }
    out
}

/// The last known state of an upstream (by its metric label: the route's name, or
/// `upstreams.NAME`): `None` before any connection attempt or probe.
pub fn upstream_is_up(upstream: &str) -> Option<bool> {
    health()
        .upstreams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(upstream)
        .copied()
}

/// The operator paused (`Some(refuses)`: whether it refuses new connections) or resumed
/// (`None`) a route: `mllp_guard_route_paused`, and `/readyz` (a paused route that refuses
/// connections is unready).
pub fn set_paused(route: &str, paused: Option<bool>) {
    metrics()
        .route_paused
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .set(i64::from(paused.is_some()));
    let mut all = health().paused.lock().unwrap_or_else(|e| e.into_inner());
    match paused {
        Some(refuses) => all.insert(route.to_string(), refuses),
        None => all.remove(route),
    };
}

/// The paused routes (and whether each refuses new connections).
pub fn paused_routes() -> BTreeMap<String, bool> {
    health()
        .paused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

const HOT_OUTCOMES: [&str; 2] = ["forwarded", "queued"];
const HOT_ACKS: [&str; 7] = ["AA", "AE", "AR", "CA", "CE", "CR", "none"];
const HOT_SLOTS: usize = HOT_OUTCOMES.len() * HOT_ACKS.len();

/// Where a message's counter sits in [`RouteMetrics::hot`], if its labels are hot ones.
fn hot_slot(direction: &str, outcome: &str, ack: &str) -> Option<usize> {
    if direction != "from_sender" {
        return None;
    }
    let o = HOT_OUTCOMES.iter().position(|&hot| hot == outcome)?;
    let a = HOT_ACKS.iter().position(|&hot| hot == ack)?;
    Some(o * HOT_ACKS.len() + a)
}

impl RouteMetrics {
    pub fn new(name: Arc<str>) -> RouteMetrics {
        let m = metrics();
        let bytes = |direction| {
            m.message_bytes
                .get_or_create(&BytesLabels {
                    route: name.to_string(),
                    direction,
                })
                .clone()
        };
        let (bytes_in, bytes_out) = (bytes("in"), bytes("out"));
        let duration = m
            .message_duration
            .get_or_create(&RouteLabel {
                route: name.to_string(),
            })
            .clone();
        let by_ack = ack_counts()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        RouteMetrics {
            by_ack,
            name,
            bytes_in,
            bytes_out,
            duration,
            hot: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts one answered message: by direction, outcome and ack code (`none` when no ack went
    /// out), its bytes in (received) and out (passed on), and its duration.
    pub fn message(
        &self,
        direction: &'static str,
        outcome: &'static str,
        ack: &'static str,
        bytes_in: usize,
        bytes_out: usize,
        took: Duration,
    ) {
        let labelled = || {
            metrics()
                .messages
                .get_or_create(&MessageLabels {
                    route: self.name.to_string(),
                    direction,
                    outcome,
                    ack,
                })
                .clone()
        };
        if direction == "from_sender" {
            if let Some(i) = HOT_ACKS.iter().position(|&code| code == ack) {
                self.by_ack[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        match hot_slot(direction, outcome, ack) {
            Some(slot) => self.hot[slot].get_or_init(labelled).inc(),
            None => labelled().inc(),
        };
        self.bytes_in.inc_by(bytes_in as u64);
        self.bytes_out.inc_by(bytes_out as u64);
        self.duration.observe(took.as_secs_f64());
    }
}

pub fn rule_rejected(route: &str, rule: &str) {
    metrics()
        .rule_rejections
        .get_or_create(&RuleLabels {
            route: route.to_string(),
            rule: rule.to_string(),
        })
        .inc();
}

pub fn rate_limited(route: &str) {
    metrics()
        .rate_limited
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .inc();
}

pub fn control_id_reused(route: &str) {
    metrics()
        .control_id_reused
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .inc();
}

/// An upstream's ack latency histogram, resolved once per upstream (see [`RouteMetrics`]).
pub struct AckDuration(Histogram);

impl AckDuration {
    pub fn new(upstream: &str) -> AckDuration {
        let label = UpstreamLabel {
            upstream: upstream.to_string(),
        };
        AckDuration(metrics().ack_duration.get_or_create(&label).clone())
    }

    /// Time from sending a message upstream to its ack.
    pub fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

/// A webhook is configured: its counters exist (at 0) from now, so rules on `increase()` see
/// the first drop.
pub fn webhook_configured(webhook: &str) {
    let m = metrics();
    for (family, reason) in [
        (&m.webhook_deliveries, "delivered"),
        (&m.webhook_dropped, "queue_full"),
        (&m.webhook_dropped, "gave_up"),
    ] {
        let _ = family.get_or_create(&WebhookLabels {
            webhook: webhook.to_string(),
            reason,
        });
    }
}

/// An event reached a webhook (`None`), or was dropped for `Some(reason)`.
pub fn webhook_outcome(webhook: &str, dropped: Option<&'static str>) {
    let m = metrics();
    let (family, reason) = match dropped {
        None => (&m.webhook_deliveries, "delivered"),
        Some(reason) => (&m.webhook_dropped, reason),
    };
    family
        .get_or_create(&WebhookLabels {
            webhook: webhook.to_string(),
            reason,
        })
        .inc();
}

/// Records a connection attempt's result; also what `/readyz` reports for the upstream.
/// A health check of `upstream` (no message, no connection kept): up or down, for
/// `mllp_guard_upstream_up` and `/readyz`; not counted as a connection.
pub fn upstream_probe(upstream: &str, ok: bool) {
    metrics()
        .upstream_up
        .get_or_create(&UpstreamLabel {
            upstream: upstream.to_string(),
        })
        .set(i64::from(ok));
    health()
        .upstreams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(upstream.to_string(), ok);
}

pub fn upstream_connect(upstream: &str, ok: bool) {
    let m = metrics();
    let label = UpstreamLabel {
        upstream: upstream.to_string(),
    };
    m.upstream_up.get_or_create(&label).set(i64::from(ok));
    if ok {
        m.upstream_connects.get_or_create(&label).inc();
    } else {
        m.upstream_connect_failures.get_or_create(&label).inc();
    }
    health()
        .upstreams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(label.upstream, ok);
}

// ---------------------------------------------------------------------------------------------
// Custody queues: read at scrape time
// ---------------------------------------------------------------------------------------------

/// Something that reports a route's queue when scraped.
pub trait QueueProbe: Send + Sync {
    fn route(&self) -> &str;
    /// The queue now, and dead letters so far.
    fn probe(&self) -> (QueueStats, u64);
    /// False when the queue cannot take writes (a failed sync poisons it until reopened).
    fn writable(&self) -> bool;
    /// Why the queue is backed up past `queue.unready_when`, when it is.
    fn backed_up(&self) -> Option<String> {
        None
    }
}

fn probes() -> &'static Mutex<Vec<Arc<dyn QueueProbe>>> {
    static PROBES: OnceLock<Mutex<Vec<Arc<dyn QueueProbe>>>> = OnceLock::new();
    PROBES.get_or_init(Mutex::default)
}

/// Reports this queue from now on (replacing an earlier one of the same route).
pub fn watch_queue(probe: Arc<dyn QueueProbe>) {
    // Exported (at 0) from the start, so that a rule on it has a series before the first time
    // the dead letters fill.
    let _ = metrics().dead_letters_full.get_or_create(&RouteLabel {
        route: probe.route().to_string(),
    });
    let mut all = probes().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|p| p.route() != probe.route());
    all.push(probe);
}

/// Every watched queue now: (route, messages pending, when the oldest was enqueued, ms since
/// the epoch).
pub fn queue_snapshot() -> Vec<(String, u64, Option<u64>)> {
    let all: Vec<Arc<dyn QueueProbe>> = probes().lock().unwrap_or_else(|e| e.into_inner()).clone();
    all.iter()
        .map(|p| {
            let (stats, _) = p.probe();
            (
                p.route().to_string(),
                stats.messages,
                stats.oldest_enqueued_ms,
            )
        })
        .collect()
}

#[derive(Debug)]
struct QueueCollector;

impl prometheus_client::collector::Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all: Vec<Arc<dyn QueueProbe>> =
            probes().lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let rows: Vec<(RouteLabel, QueueStats, u64)> = all
            .iter()
            .map(|p| {
                let (stats, dead) = p.probe();
                (
                    RouteLabel {
                        route: p.route().to_string(),
                    },
                    stats,
                    dead,
                )
            })
            .collect();
        type Value = fn(&QueueStats, u64, u64) -> f64;
        let gauges: [(&str, &str, Value); 4] = [
            (
                "mllp_guard_queue_depth_messages",
                "Messages in custody not yet delivered, by route",
                |s, _, _| s.messages as f64,
            ),
            (
                "mllp_guard_queue_depth_bytes",
                "Bytes in custody not yet delivered, by route",
                |s, _, _| s.bytes as f64,
            ),
            (
                "mllp_guard_queue_oldest_age_seconds",
                "Age of the oldest undelivered message, by route (0 when empty)",
                |s, _, now| {
                    s.oldest_enqueued_ms
                        .map_or(0.0, |at| now.saturating_sub(at) as f64 / 1000.0)
                },
            ),
            (
                "mllp_guard_queue_dead_letters",
                "Messages moved to the dead-letter store since start, by route",
                |_, dead, _| dead as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let sample = ConstGauge::new(0.0);
            let mut family = encoder.encode_descriptor(name, help, None, sample.metric_type())?;
            for (label, stats, dead) in &rows {
                let gauge = ConstGauge::new(value(stats, *dead, now_ms));
                gauge.encode(family.encode_family(label)?)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The memory budget (`max_buffered_bytes`) and the runtime's tasks: read at scrape time
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct BudgetCollector;

impl prometheus_client::collector::Collector for BudgetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        let figures = crate::wire::budget::Budget::shared().figures();
        let gauges = [
            (
                "mllp_guard_buffered_bytes",
                "Message bytes lent from the memory budget (max_buffered_bytes) now, beyond each connection's 64 KiB allowance",
                figures.in_use,
            ),
            (
                "mllp_guard_buffered_bytes_limit",
                "The memory budget for message bytes (max_buffered_bytes)",
                figures.limit,
            ),
            (
                "mllp_guard_kept_buffer_bytes",
                "Bytes of large frames' buffers kept for reuse by later large frames, outside the memory budget (at most 16 MiB)",
                crate::wire::warm_buffers::kept_bytes(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as f64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let waits = ConstCounter::new(figures.waits);
        waits.encode(encoder.encode_descriptor(
            "mllp_guard_buffer_waits",
            "Reads that waited for the memory budget (a large frame held back while it was spent)",
            None,
            waits.metric_type(),
        )?)?;
        let waited = ConstCounter::new(figures.waited.as_secs_f64());
        waited.encode(encoder.encode_descriptor(
            "mllp_guard_buffer_wait_seconds",
            "Time reads spent waiting for the memory budget",
            None,
            waited.metric_type(),
        )?)?;
        // The runtime's live tasks (one per connection, plus a fixed few): what a soak watches
        // for leaks beside memory and file descriptors.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = ConstGauge::new(runtime.metrics().num_alive_tasks() as f64);
            tasks.encode(encoder.encode_descriptor(
                "mllp_guard_runtime_tasks",
                "Tasks alive in the guard's runtime now",
                None,
                tasks.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates and CRLs of the config in force: read at scrape time
// ---------------------------------------------------------------------------------------------

/// A dated PKI file of the running config.
#[derive(Clone, Debug)]
pub enum PkiDate {
    Certificate {
        file: String,
        subject: String,
        not_after: std::time::SystemTime,
    },
    Crl {
        file: String,
        issuer: String,
        next_update: Option<std::time::SystemTime>,
    },
}

fn pki_dates() -> &'static Mutex<Vec<PkiDate>> {
    static DATES: OnceLock<Mutex<Vec<PkiDate>>> = OnceLock::new();
    DATES.get_or_init(Mutex::default)
}

/// The certificates and CRLs of the config now in force (replaced on every reload).
pub fn set_pki_dates(dates: Vec<PkiDate>) {
    *pki_dates().lock().unwrap_or_else(|e| e.into_inner()) = dates;
}

/// The certificates and CRLs of the config now in force.
pub fn pki_snapshot() -> Vec<PkiDate> {
    pki_dates()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    file: String,
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrlLabels {
    file: String,
    issuer: String,
}

#[derive(Debug)]
struct PkiCollector;

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl prometheus_client::collector::Collector for PkiCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let dates = pki_dates()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = std::time::SystemTime::now();
        let kind = ConstGauge::new(0.0).metric_type();
        let mut family = encoder.encode_descriptor(
            "mllp_guard_certificate_expiry_timestamp_seconds",
            "When each loaded certificate expires (Unix time), by file and subject",
            None,
            kind,
        )?;
        for date in &dates {
            if let PkiDate::Certificate {
                file,
                subject,
                not_after,
            } = date
            {
                let labels = CertLabels {
                    file: file.clone(),
                    subject: subject.clone(),
                };
                ConstGauge::new(unix_seconds(*not_after)).encode(family.encode_family(&labels)?)?;
            }
        }
        let crls: Vec<(CrlLabels, Option<std::time::SystemTime>)> = dates
            .iter()
            .filter_map(|d| match d {
                PkiDate::Crl {
                    file,
                    issuer,
                    next_update,
                } => Some((
                    CrlLabels {
                        file: file.clone(),
                        issuer: issuer.clone(),
                    },
                    *next_update,
                )),
                PkiDate::Certificate { .. } => None,
            })
            .collect();
        let mut family = encoder.encode_descriptor(
            "mllp_guard_crl_next_update_timestamp_seconds",
            "When each loaded CRL must be replaced (its nextUpdate, Unix time; absent without one)",
            None,
            kind,
        )?;
        for (labels, next) in &crls {
            if let Some(next) = next {
                ConstGauge::new(unix_seconds(*next)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "mllp_guard_crl_expired",
            "1 when a loaded CRL is past its nextUpdate (replace the file; it reloads by itself)",
            None,
            kind,
        )?;
        for (labels, next) in &crls {
            let expired = next.is_some_and(|n| n < now);
            ConstGauge::new(f64::from(u8::from(expired))).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Health {
    panicked: AtomicBool,
    /// Guards started and not stopped (one per process, except in tests).
    serving: AtomicUsize,
    upstreams: Mutex<BTreeMap<String, bool>>,
    /// Routes that could not start, and why.
    down_routes: Mutex<BTreeMap<String, String>>,
    /// Routes the operator paused, and whether each refuses new connections.
    paused: Mutex<BTreeMap<String, bool>>,
}

fn health() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(Health::default)
}

/// Makes any panic, on any thread, turn `/healthz` false (the previous hook still runs).
pub fn install_panic_flag() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            health().panicked.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// A guard has applied its config and bound every listener (`true`), or is stopping.
pub fn set_serving(serving: bool) {
    if serving {
        health().serving.fetch_add(1, Ordering::SeqCst);
    } else {
        let _ = health()
            .serving
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Liveness: no panic happened.
pub fn live() -> bool {
    !health().panicked.load(Ordering::SeqCst)
}

/// A route's dead letters are full (`true`) or take messages again.
pub fn dead_letters_full(route: &str, full: bool) {
    metrics()
        .dead_letters_full
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .set(i64::from(full));
}

/// A route serves (`None`), or could not start and why (`Some`): `mllp_guard_route_up`, and
/// `/readyz` names a route that is down.
pub fn set_route_down(route: &str, why: Option<String>) {
    metrics()
        .route_up
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .set(i64::from(why.is_none()));
    let mut down = health()
        .down_routes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match why {
        Some(why) => down.insert(route.to_string(), why),
        None => down.remove(route),
    };
}

/// Readiness and the reasons it is not: serving, each upstream's last connection attempt
/// succeeded (an upstream not tried yet counts as reachable; with `health_check`, its last
/// probe), every route started, each queue writable and not backed up past
/// `queue.unready_when`.
pub fn readiness() -> (bool, Vec<String>) {
    let h = health();
    let mut problems = Vec::new();
    if h.serving.load(Ordering::SeqCst) == 0 {
        problems.push("not serving: listeners are not bound (starting or stopping)".to_string());
    }
    for (upstream, up) in h.upstreams.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !up {
            problems.push(format!(
                "upstream {upstream}: the last connection attempt failed"
            ));
        }
    }
    for (route, why) in h
        .down_routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        problems.push(format!("route {route} is down: {why}"));
    }
    for (route, refuses) in h.paused.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if *refuses {
            problems.push(format!(
                "route {route} is paused by the operator (new connections are refused)"
            ));
        }
    }
    for probe in probes().lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !probe.writable() {
            problems.push(format!(
                "route {}: its queue cannot take writes",
                probe.route()
            ));
        }
        if let Some(why) = probe.backed_up() {
            problems.push(format!(
                "route {}: its queue is backed up: {why}",
                probe.route()
            ));
        }
    }
    (problems.is_empty() && live(), problems)
}
