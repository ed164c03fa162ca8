//! Webhooks (`notify:`): the events worth telling someone about, each POSTed as a JSON object to
//! the webhooks that asked for it.
//!
//! The data path calls the small functions here (`connection_refused`, `upstream_connect`, ...)
//! and they return at once: when no webhook wants the event nothing is built, and otherwise the
//! body is offered to each webhook's bounded queue (`max_pending`), never awaited. A full queue
//! drops the event (counted in `mllp_guard_webhook_dropped_total{reason="queue_full"}`, logged).
//! [`deliver`] owns the sending: one task per webhook, retries with backoff, the signature.
//!
//! `upstream_down` / `upstream_up` are transitions: this module keeps, per upstream, whether it
//! is down and why (a failed connect, a failed health check, an ack timeout), fires
//! `upstream_down` once when it becomes unreachable and `upstream_up` once when it answers again
//! (a successful connect after a connect or health-check failure; an ack after an ack timeout,
//! since a receiver that accepts connections but never answers is not back). `queue_backlog`
//! and `certificate_expiring` are found by a watcher that reads the queue and certificate
//! gauges every two seconds.
//!
//! Every body: `event`, `route` (null when the event belongs to no route), `time` (RFC 3339,
//! UTC), and the details (peer, reason, counts) both at the top level and under `details`.
//! Never a payload byte: details are addresses, names, counts, reasons and control ids, as in
//! the log lines.
//!
//! Knows nothing of sockets of the data path or of HL7; reads the metrics' gauges only.

mod deliver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Notify, NotifyEvent};

/// The webhooks of the config in force.
struct Notifier {
    config: Notify,
    /// Every event some webhook wants (one bit each).
    wanted: u32,
    hooks: Vec<deliver::Queue>,
    /// Stops the watcher and the delivery tasks when this config is replaced.
    stop: CancellationToken,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn current() -> &'static ArcSwapOption<Notifier> {
    static CURRENT: OnceLock<ArcSwapOption<Notifier>> = OnceLock::new();
    CURRENT.get_or_init(ArcSwapOption::empty)
}

/// Applies the `notify` block of a (re)loaded config: unchanged, the webhooks keep their queues;
/// changed, the old ones stop (events still queued for them are dropped, counted) and the new
/// ones start. Must run inside the tokio runtime.
pub fn configure(config: &Notify) {
    let running = current().load();
    if running.as_ref().is_some_and(|n| n.config == *config) {
        return;
    }
    if config.webhooks.is_empty() {
        current().store(None);
        return;
    }
    let stop = CancellationToken::new();
    let mut hooks = Vec::new();
    for hook in &config.webhooks {
        match deliver::start(hook, stop.clone()) {
            Ok(queue) => hooks.push(queue),
            Err(err) => {
                tracing::error!(webhook = %deliver::label(&hook.url), error = %err, "webhook not started; its events are not sent")
            }
        }
    }
    let wanted = hooks.iter().fold(0, |bits, h| bits | h.events);
    let watched = NotifyEvent::QueueBacklog.bit() | NotifyEvent::CertificateExpiring.bit();
    if wanted & watched != 0 {
        tokio::spawn(watch(config.clone(), stop.clone()));
    }
    tracing::info!(
        webhooks = hooks.len(),
        "webhooks configured (notify.webhooks)"
    );
    current().store(Some(Arc::new(Notifier {
        config: config.clone(),
        wanted,
        hooks,
        stop,
    })));
}

/// The notifier, when some webhook wants `event`.
fn wanting(event: NotifyEvent) -> Option<Arc<Notifier>> {
    let notifier = current().load_full()?;
    (notifier.wanted & event.bit() != 0).then_some(notifier)
}

/// Builds the body of `event` and offers it to every webhook that wants it.
fn send(notifier: &Notifier, event: NotifyEvent, route: Option<&str>, details: Value) {
    let details = match details {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut body = Map::new();
    body.insert("event".into(), event.as_str().into());
    body.insert("route".into(), route.map_or(Value::Null, Value::from));
    body.insert("time".into(), rfc3339(SystemTime::now()).into());
    for (key, value) in &details {
        body.entry(key.clone()).or_insert_with(|| value.clone());
    }
    body.insert("details".into(), Value::Object(details));
    let bytes = Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default());
    for hook in &notifier.hooks {
        if hook.events & event.bit() != 0 {
            hook.offer(event, bytes.clone());
        }
    }
}

/// Fires `event` when a webhook wants it; `details` is only built then.
fn fire(event: NotifyEvent, route: Option<&str>, details: impl FnOnce() -> Value) {
    if let Some(notifier) = wanting(event) {
        send(&notifier, event, route, details());
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// A sender's connection was admitted.
pub fn connection_opened(route: &str, peer: SocketAddr) {
    fire(
        NotifyEvent::ConnectionOpened,
        Some(route),
        || json!({ "peer": peer.to_string() }),
    );
}

/// A sender's connection ended (`reason`: `peer_closed`, `idle_timeout`, ...).
pub fn connection_closed(route: &str, peer: SocketAddr, reason: &str, messages: u64) {
    fire(
        NotifyEvent::ConnectionClosed,
        Some(route),
        || json!({ "peer": peer.to_string(), "reason": reason, "messages": messages }),
    );
}

/// A connection was refused before any message (`reason`: `allowlist`, `max_connections`,
/// `source_limit`, `untrusted_proxy`, `proxy_protocol`, `tls_handshake`).
pub fn connection_refused(route: &str, peer: SocketAddr, reason: &str) {
    fire(
        NotifyEvent::ConnectionRefused,
        Some(route),
        || json!({ "peer": peer.to_string(), "reason": reason }),
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream transitions
// ---------------------------------------------------------------------------------------------

/// Upstreams now down (by metrics label), and why: `connect_failed`, `health_check`,
/// `ack_timeout`.
fn down() -> &'static Mutex<HashMap<String, &'static str>> {
    static DOWN: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    DOWN.get_or_init(Mutex::default)
}

/// How many upstreams are down: lets [`upstream_answered`] (once per message) return without a
/// lock while all are up.
static DOWN_COUNT: AtomicUsize = AtomicUsize::new(0);

/// What changed for an upstream.
enum Reach<'a> {
    Failed { why: &'static str, error: &'a str },
    Connected,
    Answered,
}

/// The route an upstream label belongs to: its own name, or none for a named upstream
/// (`upstreams.NAME`).
fn route_of(label: &str) -> Option<&str> {
    (!label.starts_with("upstreams.")).then_some(label)
}

fn upstream_reach(label: &str, address: &str, reach: Reach<'_>) {
    let up = NotifyEvent::UpstreamUp;
    let down_event = NotifyEvent::UpstreamDown;
    let Some(notifier) = wanting(up).or_else(|| wanting(down_event)) else {
        return;
    };
    let mut down = down().lock().unwrap_or_else(|e| e.into_inner());
    match reach {
        Reach::Failed { why, error } => {
            if down.contains_key(label) {
                return;
            }
            down.insert(label.to_string(), why);
            DOWN_COUNT.store(down.len(), Ordering::Relaxed);
            drop(down);
            if notifier.wanted & down_event.bit() != 0 {
                send(
                    &notifier,
                    down_event,
                    route_of(label),
                    json!({ "upstream": label, "address": address, "reason": why, "error": error }),
                );
            }
        }
        Reach::Connected | Reach::Answered => {
            let was = match (down.get(label), &reach) {
                (None, _) => return,
                // Connecting is not answering: a receiver that accepts and never acks is not back.
                (Some(&"ack_timeout"), Reach::Connected) => return,
                (Some(why), _) => *why,
            };
            down.remove(label);
            DOWN_COUNT.store(down.len(), Ordering::Relaxed);
            drop(down);
            if notifier.wanted & up.bit() != 0 {
                send(
                    &notifier,
                    up,
                    route_of(label),
                    json!({ "upstream": label, "address": address, "was": was }),
                );
            }
        }
    }
}

/// A connection attempt to the upstream `label` (at `address`) succeeded, or failed with
/// `error`.
pub fn upstream_connect(label: &str, address: &str, error: Option<&str>) {
    let reach = match error {
        Some(error) => Reach::Failed {
            why: "connect_failed",
            error,
        },
        None => Reach::Connected,
    };
    upstream_reach(label, address, reach);
}

/// A health check of the upstream passed, or failed with `error`.
pub fn upstream_probe(label: &str, address: &str, error: Option<&str>) {
    let reach = match error {
        Some(error) => Reach::Failed {
            why: "health_check",
            error,
        },
        None => Reach::Connected,
    };
    upstream_reach(label, address, reach);
}

/// The upstream did not ack within `ack_timeout`.
pub fn upstream_ack_timeout(label: &str, address: &str, error: &str) {
    upstream_reach(
        label,
        address,
        Reach::Failed {
            why: "ack_timeout",
            error,
        },
    );
}

/// The upstream answered a message (called per message: free while every upstream is up, so
/// the address is written out only when an upstream is down).
pub fn upstream_answered(label: &str, address: &dyn std::fmt::Display) {
    if DOWN_COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    upstream_reach(label, &address.to_string(), Reach::Answered);
}

// ---------------------------------------------------------------------------------------------
// Custody, reloads
// ---------------------------------------------------------------------------------------------

/// A queued message was moved to the dead letters.
pub fn dead_letter(route: &str, seq: u64, control_id: &str, reason: &str) {
    fire(
        NotifyEvent::DeadLetter,
        Some(route),
        || json!({ "seq": seq, "control_id": control_id, "reason": reason }),
    );
}

/// A reload applied a new config.
pub fn config_reloaded(file: &str, added: &[String], removed: &[String], updated: &[String]) {
    fire(
        NotifyEvent::ConfigReloaded,
        None,
        || json!({ "file": file, "added": added, "removed": removed, "updated": updated }),
    );
}

/// A reload was refused: the running config stays in force.
pub fn config_rejected(file: &str, errors: &[String]) {
    fire(
        NotifyEvent::ConfigRejected,
        None,
        || json!({ "file": file, "errors": errors.len(), "reasons": errors.iter().take(20).collect::<Vec<_>>() }),
    );
}

// ---------------------------------------------------------------------------------------------
// The watcher: queue backlog, certificates
// ---------------------------------------------------------------------------------------------

/// How often the watcher reads the queues and certificates.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// An expiring certificate is told about again after this long.
const CERTIFICATE_AGAIN: Duration = Duration::from_secs(24 * 3600);

async fn watch(config: Notify, stop: CancellationToken) {
    let mut backed_up: Vec<String> = Vec::new();
    let mut told: HashMap<(String, SystemTime), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let backlog = &config.queue_backlog;
        if backlog.pending.is_some() || backlog.oldest.is_some() {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for (route, pending, oldest_ms) in crate::ops::metrics::queue_snapshot() {
                let age = oldest_ms.map_or(Duration::ZERO, |at| {
                    Duration::from_millis(now_ms.saturating_sub(at))
                });
                let over = backlog.pending.is_some_and(|p| pending >= p)
                    || backlog
                        .oldest
                        .is_some_and(|o| oldest_ms.is_some() && age >= o);
                let known = backed_up.contains(&route);
                if over && !known {
                    fire(NotifyEvent::QueueBacklog, Some(&route), || {
                        json!({
                            "pending": pending,
                            "oldest_seconds": age.as_secs(),
                            "threshold_pending": backlog.pending,
                            "threshold_oldest_seconds": backlog.oldest.map(|o| o.as_secs()),
                        })
                    });
                    backed_up.push(route);
                } else if !over && known {
                    backed_up.retain(|r| *r != route);
                }
            }
        }
        let now = SystemTime::now();
        for date in crate::ops::metrics::pki_snapshot() {
            let crate::ops::metrics::PkiDate::Certificate {
                file,
                subject,
                not_after,
            } = date
            else {
                continue;
            };
            let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
            if left > config.certificate_expiring_within {
                continue;
            }
            let key = (file.clone(), not_after);
            if told
                .get(&key)
                .is_some_and(|at| at.elapsed() < CERTIFICATE_AGAIN)
            {
                continue;
            }
            told.insert(key, Instant::now());
            fire(NotifyEvent::CertificateExpiring, None, || {
                json!({
                    "file": file,
                    "subject": subject,
                    "not_after": rfc3339(not_after),
                    "expires_in_seconds": left.as_secs(),
                    "expired": left.is_zero(),
                })
            });
        }
    }
}
