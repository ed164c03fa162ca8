//! The configuration file: YAML text in, a validated [`Config`] or every error out.
//!
//! Two layers, and runtime code only ever sees the second:
//!
//! 1. **Raw**: serde mirrors of the YAML (`Raw*`, private), every struct `deny_unknown_fields`,
//!    every scalar kept as text wrapped in [`serde_saphyr::Spanned`] so it remembers its line and
//!    column. serde-saphyr reports syntax errors, unknown keys, missing keys and wrong shapes;
//!    `serde_path_to_error` adds the YAML path (`routes[0].listne`). Such an error stops the parse,
//!    so it is reported alone.
//! 2. **Validated**: [`Config::parse`] walks the raw tree, parses every value (addresses,
//!    durations, sizes, CIDRs), checks cross-route rules (unique names, non-overlapping listen
//!    addresses) and loads the TLS material through [`crate::tls`]. It collects *every* problem
//!    before giving up, each as a [`ConfigError`] with its YAML path, the line and column of the
//!    offending value and what to do about it, so `mllp-guard check` shows them all at once.
//!
//! Relative file paths (certificates, keys, CAs, `state_dir`) resolve from the directory of the
//! config file, not from the working directory.
//!
//! Pure apart from reading the config file and the PEM files it names: no sockets, no clock.
//!
//! The YAML keys are a public contract (see the README): add keys, never rename them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde_saphyr::{Location, Spanned};

use crate::firewall::policy::Allowlist;
use crate::tls::{self, PemRole, TlsError};
use crate::wire::codec::Framing;

mod error;
mod firewall;
mod model;
mod raw;
mod scalars;
mod tls_policy;
use error::{on_line, position};
pub use error::{ConfigError, ConfigErrors};
pub use model::{
    AckMode, Admin, ClientTls, Config, Connections, CustodyConfig, Delivery, IdleReopen,
    JetStreamQueue, Keepalive, MllpRelease, NatsTls, OnLimit, OnReply, OnUpstreamFailure,
    QueueBackend, RateLimits, ReceiverRole, Reconnect, ReplyAction, Retry, Route, SenderRole,
    ServerTls, UpstreamAddress, UpstreamConfig, DEFAULT_ACK_MODE, DEFAULT_ACK_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_JETSTREAM_DUPLICATE_WINDOW, DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
    DEFAULT_JETSTREAM_REPLICAS, DEFAULT_JETSTREAM_TAKEOVER, DEFAULT_MAX_ACK_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TRACKED_SOURCES,
    DEFAULT_ON_REPLY_AE, DEFAULT_ON_REPLY_AR, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES,
    DEFAULT_QUEUE_SEGMENT_BYTES, DEFAULT_RECEIVE_TIMEOUT, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
    DEFAULT_SHUTDOWN_GRACE,
};
use raw::{
    parse_raw, RawClientTls, RawConfig, RawFraming, RawJetStream, RawQueue, RawRetry, RawRoute,
    RawServerTls, RawUpstream, Text,
};
use scalars::{
    parse_ack_mode, parse_bool, parse_byte, parse_connections, parse_count, parse_delivery,
    parse_duration, parse_frame_size, parse_idle_reopen, parse_keepalive_duration,
    parse_keepalive_retries, parse_listen, parse_nats_server, parse_on_upstream_failure,
    parse_positive_duration, parse_proxy_version, parse_queue_size, parse_release,
    parse_reply_action, parse_route_name, parse_server_name, parse_stream_name,
    parse_upstream_address, DeliveryKind,
};

impl Config {
    /// Reads and validates the file; TLS material is loaded and checked too, so `check` reports
    /// everything at once. Relative paths inside resolve from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let whole_file_error = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                yaml_path: String::new(),
                line: None,
                column: None,
                message,
            }])
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            whole_file_error(match e.kind() {
                io::ErrorKind::NotFound => "config file not found".to_string(),
                io::ErrorKind::InvalidData => {
                    "the config file is not UTF-8 text; save it as UTF-8".to_string()
                }
                _ => format!("cannot read the config file: {e}"),
            })
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        Config::parse(&text, path, &base_dir)
    }

    /// Same as [`Config::load`] from text: `base_dir` resolves relative paths, `file` is used in
    /// messages.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let raw = parse_raw(text, file)?;
        let mut v = Validator {
            file,
            base_dir,
            errors: Vec::new(),
            inputs: vec![base_dir.join(file.file_name().unwrap_or(file.as_os_str()))],
        };
        let mut config = v.config(raw);
        if v.errors.is_empty() {
            v.inputs.sort();
            v.inputs.dedup();
            config.inputs = v.inputs;
            Ok(config)
        } else {
            // Document order reads best, the config file first, then each rules file; errors
            // without a position (none today) go last. A rules file shared by several routes
            // reports its errors once.
            v.errors.sort_by_key(|e| {
                let other_file = (e.file != file).then(|| e.file.clone());
                (other_file, e.line.is_none(), e.line, e.column)
            });
            let mut unique: Vec<ConfigError> = Vec::with_capacity(v.errors.len());
            for e in v.errors {
                if !unique.contains(&e) {
                    unique.push(e);
                }
            }
            Err(ConfigErrors(unique))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: raw -> typed, collecting every error
// ---------------------------------------------------------------------------------------------

struct Validator<'a> {
    file: &'a Path,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Every file the config was built from (rules files, certificates, keys), for reloads.
    inputs: Vec<PathBuf>,
}

/// A parsed `listen` address with what is needed to report a clash.
struct Listener {
    index: usize,
    name: String,
    addr: SocketAddr,
    line: Option<usize>,
}

impl Validator<'_> {
    fn error(&mut self, yaml_path: impl Into<String>, at: &Location, message: impl Into<String>) {
        let (line, column) = position(at);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            yaml_path: yaml_path.into(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Parses an optional scalar, recording the error and falling back to `default` on failure
    /// (the config is only returned when there are no errors, so the fallback never escapes).
    fn value<T>(
        &mut self,
        path: String,
        raw: &Option<Text>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(raw) = raw else { return default };
        match parse(&raw.value) {
            Ok(v) => v,
            Err(message) => {
                self.error(path, &raw.referenced, message);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let shutdown_grace = self.value(
            "shutdown_grace".into(),
            &raw.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            parse_duration,
        );
        let state_dir = raw.state_dir.as_ref().and_then(|raw| {
            let written = raw.value.trim();
            if written.is_empty() {
                self.error(
                    "state_dir",
                    &raw.referenced,
                    "a directory path is required here, e.g. /var/lib/mllp-guard",
                );
                None
            } else {
                Some(self.base_dir.join(written))
            }
        });
        let (upstreams, upstream_names) = self.upstreams(raw.upstreams.as_ref());
        if raw.routes.value.is_empty() {
            self.error(
                "routes",
                &raw.routes.referenced,
                "no routes are defined; add at least one route under `routes:`",
            );
        }
        let mut routes = Vec::new();
        let mut names: HashMap<String, (usize, Option<usize>)> = HashMap::new();
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, raw_route) in raw.routes.value.iter().enumerate() {
            let route = self.route(i, raw_route, state_dir.as_deref(), &upstream_names);
            let name_at = &raw_route.value.name;
            if route.name.is_empty() {
                // Invalid name, already reported.
            } else if let Some(&(first, first_line)) = names.get(&route.name) {
                self.error(
                    format!("routes[{i}].name"),
                    &name_at.referenced,
                    format!(
                        "route name \"{}\" is already used by routes[{first}]{}; give each route a unique name",
                        route.name,
                        on_line(first_line)
                    ),
                );
            } else {
                names.insert(route.name.clone(), (i, position(&name_at.referenced).0));
            }
            // Every address this route binds: its listener and an upstream that accepts.
            let mut binds = Vec::new();
            if let Some(listen) = &raw_route.value.listen {
                binds.push((format!("routes[{i}].listen"), listen));
            }
            if let Some(accept) = &raw_route.value.upstream.value.accept {
                binds.push((format!("routes[{i}].upstream.accept"), accept));
            }
            for (yaml_path, raw_addr) in binds {
                let Ok(addr) = raw_addr.value.trim().parse::<SocketAddr>() else {
                    continue;
                };
                let listen_at = &raw_addr.referenced;
                if let Some(other) = listeners.iter().find(|l| listen_clash(l.addr, addr)) {
                    let message = if other.addr == addr {
                        format!(
                            "listen address {addr} is already used by routes[{}] \"{}\"{}; give each route its own port",
                            other.index, other.name, on_line(other.line)
                        )
                    } else {
                        format!(
                            "listen address {addr} overlaps {} of routes[{}] \"{}\"{} (an unspecified address listens on every local address); give each route its own port",
                            other.addr, other.index, other.name, on_line(other.line)
                        )
                    };
                    self.error(yaml_path, listen_at, message);
                }
                listeners.push(Listener {
                    index: i,
                    name: route.name.clone(),
                    addr,
                    line: position(listen_at).0,
                });
            }
            routes.push(route);
        }
        if raw.state_dir.is_none() {
            // Reported once, at the first route that needs it.
            let first = routes
                .iter()
                .zip(&raw.routes.value)
                .enumerate()
                .find(|(_, (route, _))| {
                    matches!(&route.delivery, Delivery::StoreAndForward(c) if c.backend == QueueBackend::Embedded)
                });
            if let Some((i, (_, raw_route))) = first {
                if let Some(delivery) = &raw_route.value.delivery {
                    self.error(
                        format!("routes[{i}].delivery"),
                        &delivery.referenced,
                        "store-and-forward needs a top-level `state_dir` to keep its queues in; add e.g. `state_dir: /var/lib/mllp-guard` at the top of the file (one directory per route is created under it)",
                    );
                }
            }
        }
        let admin = raw.admin.as_ref().map(|admin| Admin {
            listen: self.value(
                "admin.listen".into(),
                &Some(admin.value.listen.clone()),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                parse_listen,
            ),
        });
        if let Some(admin) = &admin {
            for (i, route) in routes.iter().enumerate() {
                let clash = route
                    .sender
                    .listen_addr()
                    .is_some_and(|addr| listen_clash(addr, admin.listen));
                if let (true, Some(raw_admin)) = (clash, &raw.admin) {
                    self.error(
                        "admin.listen",
                        &raw_admin.value.listen.referenced,
                        format!(
                            "{} is also the listen address of routes[{i}] \"{}\"; give the admin endpoint its own port",
                            admin.listen, route.name
                        ),
                    );
                }
            }
        }
        let log_payloads = self.value("log_payloads".into(), &raw.log_payloads, false, parse_bool);
        Config {
            file: self.file.to_path_buf(),
            routes,
            shutdown_grace,
            state_dir,
            upstreams,
            admin,
            log_payloads,
            inputs: Vec::new(),
        }
    }

    fn route(
        &mut self,
        i: usize,
        raw: &Spanned<RawRoute>,
        state_dir: Option<&Path>,
        upstreams: &firewall::UpstreamNames,
    ) -> Route {
        let p = format!("routes[{i}]");
        let r = &raw.value;
        let name = self.value(
            format!("{p}.name"),
            &Some(r.name.clone()),
            String::new(),
            parse_route_name,
        );
        let sender = match (&r.listen, &r.dial) {
            (Some(_), Some(dial)) => {
                self.error(
                    format!("{p}.dial"),
                    &dial.referenced,
                    "a route has exactly one of `listen` (we wait for the sender) and `dial` (we connect to a sender that is an MLLP server); remove one",
                );
                SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            }
            (None, None) => {
                self.error(
                    p.clone(),
                    &raw.referenced,
                    "missing required key `listen` (or `dial`); add e.g. `listen: 127.0.0.1:2575`, or `dial: sender-host:5000` to connect out to a sender that is an MLLP server",
                );
                SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            }
            (Some(listen), None) => SenderRole::Listen(self.value(
                format!("{p}.listen"),
                &Some(listen.clone()),
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                parse_listen,
            )),
            (None, Some(dial)) => match parse_upstream_address(&dial.value) {
                Ok(address) => SenderRole::Dial(address),
                Err(message) => {
                    self.error(format!("{p}.dial"), &dial.referenced, message);
                    SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
                }
            },
        };
        let transparent = self.value(
            format!("{p}.transparent"),
            &r.transparent,
            false,
            parse_bool,
        );
        if let (true, Some(raw)) = (transparent, &r.dial) {
            self.error(
                format!("{p}.transparent"),
                &raw.referenced,
                "transparent applies to a listener that TPROXY redirects to; a route that dials its sender has none (remove it)",
            );
        }
        let proxy_protocol = self.value(
            format!("{p}.proxy_protocol"),
            &r.proxy_protocol,
            None,
            |s| parse_proxy_version(s).map(Some),
        );
        if let (Some(_), Some(raw)) = (&r.dial, &r.proxy_protocol) {
            self.error(
                format!("{p}.proxy_protocol"),
                &raw.referenced,
                "proxy_protocol reads a header from a load balancer in front of a listener; a route that dials its sender has none (remove it)",
            );
        }
        let tls = r
            .tls
            .as_ref()
            .and_then(|t| self.server_tls(&format!("{p}.tls"), t));
        if let (Some(dial), Some(raw_tls)) = (&r.dial, &r.tls) {
            let _ = dial;
            self.error(
                format!("{p}.tls"),
                &raw_tls.referenced,
                "`tls` on a route that dials its sender is not supported: a route's tls block makes the guard a TLS server, and when it dials it is the client; use `listen` for a TLS sender",
            );
        }
        let allow = match &r.allow {
            None => {
                self.error(
                    p.clone(),
                    &raw.referenced,
                    "missing required key `allow`; list who may connect, e.g. `allow: [10.0.0.0/8, 192.0.2.7]` ([\"any\"] admits every address, [] none)",
                );
                Allowlist::Networks(Vec::new())
            }
            Some(list) => {
                let entries: Vec<&str> = list.value.iter().map(|e| e.value.as_str()).collect();
                match Allowlist::parse(&entries) {
                    Ok(allow) => allow,
                    Err((j, message)) => {
                        let at = list
                            .value
                            .get(j)
                            .map_or(&list.referenced, |e| &e.referenced);
                        self.error(format!("{p}.allow[{j}]"), at, message);
                        Allowlist::Networks(Vec::new())
                    }
                }
            }
        };
        let max_connections = self.value(
            format!("{p}.max_connections"),
            &r.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            |s| parse_count(s, 1),
        );
        let max_message_bytes = self.value(
            format!("{p}.max_message_bytes"),
            &r.max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES,
            parse_frame_size,
        );
        let receive_timeout = self.value(
            format!("{p}.receive_timeout"),
            &r.receive_timeout,
            DEFAULT_RECEIVE_TIMEOUT,
            parse_positive_duration,
        );
        let idle_timeout = self.value(format!("{p}.idle_timeout"), &r.idle_timeout, None, |s| {
            parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
        });
        let mut handshake_timeout = self.value(
            format!("{p}.handshake_timeout"),
            &r.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            parse_positive_duration,
        );
        let rules = self.rules(&p, r.rules.as_ref(), upstreams);
        let (limits, limits_handshake) = self.limits(&p, r.limits.as_ref());
        if let Some(limit) = limits_handshake {
            let route_key_valid = r
                .handshake_timeout
                .as_ref()
                .is_none_or(|t| parse_positive_duration(&t.value).is_ok());
            if r.handshake_timeout.is_some() && route_key_valid && limit != handshake_timeout {
                let at = r
                    .limits
                    .as_ref()
                    .and_then(|l| l.value.handshake_timeout.as_ref());
                if let Some(at) = at {
                    self.error(
                        format!("{p}.limits.handshake_timeout"),
                        &at.referenced,
                        format!(
                            "differs from the route's handshake_timeout ({}); set it in one place",
                            humantime::format_duration(handshake_timeout)
                        ),
                    );
                }
            }
            handshake_timeout = limit;
        }
        let on_upstream_failure = self.value(
            format!("{p}.on_upstream_failure"),
            &r.on_upstream_failure,
            OnUpstreamFailure::Nack,
            parse_on_upstream_failure,
        );
        let upstream = self.upstream(&format!("{p}.upstream"), &r.upstream);
        // A bad `max_message_bytes` is reported already; comparing the queue with it would
        // add a second error about the fallback value.
        let max_message_bytes_ok = r
            .max_message_bytes
            .as_ref()
            .is_none_or(|m| parse_frame_size(&m.value).is_ok());
        let delivery = self.delivery(
            &p,
            r,
            &state_dir.map(|d| d.join(&name)).unwrap_or_default(),
            max_message_bytes_ok.then_some(max_message_bytes),
        );
        let (framing, release) = self.framing(&format!("{p}.framing"), &r.framing);
        if let (true, false, Some(raw)) = (
            upstream.transparent_source,
            delivery == Delivery::Forward,
            &r.upstream.value.transparent_source,
        ) {
            self.error(
                format!("{p}.upstream.transparent_source"),
                &raw.referenced,
                "transparent_source needs `delivery: forward`: a queued message is delivered later, when its sender's connection may be gone",
            );
        }
        if upstream.role == ReceiverRole::OriginalDestination {
            let at = r.upstream.value.address.as_ref().map(|a| &a.referenced);
            let problem = if !transparent {
                Some("original-destination needs `transparent: true` on the route (only a connection TPROXY redirected has an original destination)")
            } else if upstream.connections != Connections::Paired {
                Some("original-destination needs `connections: paired`: each sender's connection has its own destination")
            } else if delivery != Delivery::Forward {
                Some("original-destination needs `delivery: forward`: queued messages no longer belong to a sender's connection")
            } else {
                None
            };
            if let (Some(message), Some(at)) = (problem, at) {
                self.error(format!("{p}.upstream.address"), at, message);
            }
        }
        Route {
            name,
            sender,
            transparent,
            proxy_protocol,
            tls,
            allow,
            max_connections,
            max_message_bytes,
            receive_timeout,
            idle_timeout,
            handshake_timeout,
            on_upstream_failure,
            upstream,
            delivery,
            framing,
            release,
            rules,
            limits,
        }
    }

    /// `delivery` and the custody keys. `max_message_bytes` is `None` when it was invalid.
    fn delivery(
        &mut self,
        p: &str,
        r: &RawRoute,
        queue_dir: &Path,
        max_message_bytes: Option<usize>,
    ) -> Delivery {
        // `None`: an invalid value, reported; the custody keys are then not checked at all.
        let kind = match &r.delivery {
            None => Some(DeliveryKind::Forward),
            Some(_) => self.value(format!("{p}.delivery"), &r.delivery, None, |s| {
                parse_delivery(s).map(Some)
            }),
        };
        match kind {
            None => return Delivery::Forward,
            Some(DeliveryKind::Forward) => {
                let custody_keys = [
                    ("queue", r.queue.as_ref().map(|q| &q.referenced)),
                    ("ack_mode", r.ack_mode.as_ref().map(|t| &t.referenced)),
                    ("retry", r.retry.as_ref().map(|t| &t.referenced)),
                    ("on_reply", r.on_reply.as_ref().map(|t| &t.referenced)),
                    (
                        "duplicate_window",
                        r.duplicate_window.as_ref().map(|t| &t.referenced),
                    ),
                ];
                for (key, at) in custody_keys {
                    if let Some(at) = at {
                        self.error(
                            format!("{p}.{key}"),
                            at,
                            "only used with delivery: store-and-forward; add `delivery: store-and-forward` or remove it",
                        );
                    }
                }
                return Delivery::Forward;
            }
            Some(DeliveryKind::StoreAndForward) => {}
        }
        let (mut max_bytes, mut max_messages, mut segment_bytes) = (
            DEFAULT_QUEUE_MAX_BYTES,
            DEFAULT_QUEUE_MAX_MESSAGES,
            DEFAULT_QUEUE_SEGMENT_BYTES,
        );
        let mut backend = QueueBackend::Embedded;
        if let Some(q) = &r.queue {
            let q = &q.value;
            max_bytes = self.value(
                format!("{p}.queue.max_bytes"),
                &q.max_bytes,
                DEFAULT_QUEUE_MAX_BYTES,
                parse_queue_size,
            );
            max_messages = self.value(
                format!("{p}.queue.max_messages"),
                &q.max_messages,
                DEFAULT_QUEUE_MAX_MESSAGES,
                |s| parse_count(s, 1).map(|n| n as u64),
            );
            segment_bytes = self.value(
                format!("{p}.queue.segment_bytes"),
                &q.segment_bytes,
                DEFAULT_QUEUE_SEGMENT_BYTES,
                parse_queue_size,
            );
            if let (Some(raw), Some(largest)) = (&q.max_bytes, max_message_bytes) {
                if parse_queue_size(&raw.value).is_ok() && max_bytes < largest as u64 {
                    self.error(
                        format!("{p}.queue.max_bytes"),
                        &raw.referenced,
                        format!(
                            "must be at least this route's max_message_bytes ({largest} bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"{}\" ({max_bytes} bytes)",
                            raw.value
                        ),
                    );
                }
            }
            backend = self.queue_backend(&format!("{p}.queue"), q, max_bytes);
        }
        let ack_mode = self.value(
            format!("{p}.ack_mode"),
            &r.ack_mode,
            DEFAULT_ACK_MODE,
            parse_ack_mode,
        );
        let retry = match &r.retry {
            None => Retry::default(),
            Some(raw) => self.retry(&format!("{p}.retry"), &raw.value),
        };
        let on_reply = match &r.on_reply {
            None => OnReply::default(),
            Some(raw) => OnReply {
                ae: self.value(
                    format!("{p}.on_reply.AE"),
                    &raw.value.ae,
                    DEFAULT_ON_REPLY_AE,
                    parse_reply_action,
                ),
                ar: self.value(
                    format!("{p}.on_reply.AR"),
                    &raw.value.ar,
                    DEFAULT_ON_REPLY_AR,
                    parse_reply_action,
                ),
            },
        };
        let duplicate_window = self.value(
            format!("{p}.duplicate_window"),
            &r.duplicate_window,
            Some(DEFAULT_DUPLICATE_WINDOW),
            |s| parse_duration(s).map(|d| (!d.is_zero()).then_some(d)),
        );
        Delivery::StoreAndForward(CustodyConfig {
            queue_dir: queue_dir.to_path_buf(),
            max_bytes,
            max_messages,
            segment_bytes,
            ack_mode,
            retry,
            on_reply,
            duplicate_window,
            backend,
        })
    }

    /// `queue.backend` and `queue.jetstream`; `max_bytes` is the queue's (the default cap).
    fn queue_backend(&mut self, p: &str, q: &RawQueue, max_bytes: u64) -> QueueBackend {
        let jetstream = self.value(format!("{p}.backend"), &q.backend, false, |s| {
            match s.trim() {
                "embedded" => Ok(false),
                "jetstream" => Ok(true),
                _ => Err(format!(
                    "must be `embedded` (the local segmented log, the default) or `jetstream` (a NATS JetStream stream shared by several guards), not \"{s}\""
                )),
            }
        });
        let invalid_backend = q
            .backend
            .as_ref()
            .is_some_and(|b| !matches!(b.value.trim(), "embedded" | "jetstream"));
        match (&q.jetstream, jetstream) {
            (Some(raw), false) if !invalid_backend => {
                self.error(
                    format!("{p}.jetstream"),
                    &raw.referenced,
                    "only used with `backend: jetstream`; add `backend: jetstream` to this queue or remove it",
                );
                QueueBackend::Embedded
            }
            (None, true) => {
                let at = &q.backend.as_ref().expect("backend given").referenced;
                self.error(
                    format!("{p}.jetstream"),
                    at,
                    "`backend: jetstream` needs a `jetstream:` block with at least `servers` and `stream`, e.g. jetstream: { servers: [\"nats://127.0.0.1:4222\"], stream: MLLP_LAB }",
                );
                QueueBackend::Embedded
            }
            (Some(raw), true) => QueueBackend::JetStream(Box::new(self.jetstream(
                &format!("{p}.jetstream"),
                raw,
                max_bytes,
            ))),
            _ => QueueBackend::Embedded,
        }
    }

    fn jetstream(
        &mut self,
        p: &str,
        raw: &Spanned<RawJetStream>,
        max_bytes: u64,
    ) -> JetStreamQueue {
        let j = &raw.value;
        let mut servers = Vec::new();
        match &j.servers {
            None => self.error(
                format!("{p}.servers"),
                &raw.referenced,
                "is required: the NATS servers to connect to, e.g. servers: [\"nats://10.0.0.5:4222\"]",
            ),
            Some(list) if list.value.is_empty() => self.error(
                format!("{p}.servers"),
                &list.referenced,
                "needs at least one NATS server URL, e.g. [\"nats://10.0.0.5:4222\"]",
            ),
            Some(list) => {
                for (i, server) in list.value.iter().enumerate() {
                    match parse_nats_server(&server.value) {
                        Ok(url) => servers.push(url),
                        Err(message) => {
                            self.error(format!("{p}.servers[{i}]"), &server.referenced, message)
                        }
                    }
                }
            }
        }
        let stream = match &j.stream {
            None => {
                self.error(
                    format!("{p}.stream"),
                    &raw.referenced,
                    "is required: the JetStream stream that holds this route's messages, e.g. stream: MLLP_LAB",
                );
                String::new()
            }
            some => self.value(
                format!("{p}.stream"),
                some,
                String::new(),
                parse_stream_name,
            ),
        };
        let replicas = self.value(
            format!("{p}.replicas"),
            &j.replicas,
            DEFAULT_JETSTREAM_REPLICAS,
            |s| match s.trim().parse::<usize>() {
                Ok(n) if (1..=5).contains(&n) => Ok(n),
                _ => Err(format!(
                    "must be a whole number from 1 to 5 (JetStream's limit), not \"{s}\""
                )),
            },
        );
        let max_bytes = self.value(
            format!("{p}.max_bytes"),
            &j.max_bytes,
            max_bytes,
            parse_queue_size,
        );
        let duplicate_window = self.value(
            format!("{p}.duplicate_window"),
            &j.duplicate_window,
            DEFAULT_JETSTREAM_DUPLICATE_WINDOW,
            parse_positive_duration,
        );
        let takeover = self.value(
            format!("{p}.takeover"),
            &j.takeover,
            DEFAULT_JETSTREAM_TAKEOVER,
            |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(1) {
                    return Err(format!("must be at least 1s, not \"{s}\""));
                }
                Ok(d)
            },
        );
        let publish_timeout = self.value(
            format!("{p}.publish_timeout"),
            &j.publish_timeout,
            DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
            parse_positive_duration,
        );
        let tls = j.tls.as_ref().map(|t| {
            let tp = format!("{p}.tls");
            let ca = t.value.ca.as_ref().and_then(|ca| self.file(format!("{tp}.ca"), ca));
            let client = match (&t.value.cert, &t.value.key) {
                (Some(cert), Some(key)) => {
                    let cert = self.file(format!("{tp}.cert"), cert);
                    let key = self.file(format!("{tp}.key"), key);
                    cert.zip(key)
                }
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    self.error(
                        tp.clone(),
                        &t.referenced,
                        "`cert` and `key` go together: give both (a client certificate for NATS) or neither",
                    );
                    None
                }
            };
            NatsTls { ca, client }
        });
        let credentials = j
            .credentials
            .as_ref()
            .and_then(|c| self.file(format!("{p}.credentials"), c));
        JetStreamQueue {
            servers,
            stream,
            replicas,
            max_bytes,
            duplicate_window,
            tls,
            credentials,
            takeover,
            publish_timeout,
        }
    }

    fn retry(&mut self, p: &str, raw: &RawRetry) -> Retry {
        let initial = self.value(format!("{p}.initial"), &raw.initial, None, |s| {
            parse_positive_duration(s).map(Some)
        });
        let max = self.value(format!("{p}.max"), &raw.max, None, |s| {
            parse_positive_duration(s).map(Some)
        });
        let valid =
            |given: &Option<Text>, parsed: Option<Duration>| given.is_none() || parsed.is_some();
        if !(valid(&raw.initial, initial) && valid(&raw.max, max)) {
            return Retry::default();
        }
        let initial_or_default = initial.unwrap_or(DEFAULT_RETRY_INITIAL);
        let max_or_default = max.unwrap_or(DEFAULT_RETRY_MAX);
        if max_or_default < initial_or_default {
            let shown = |d: Duration| humantime::format_duration(d).to_string();
            match (&raw.initial, &raw.max) {
                (_, Some(m)) => self.error(
                    format!("{p}.max"),
                    &m.referenced,
                    format!(
                        "must be at least retry.initial ({}{}), not \"{}\"",
                        shown(initial_or_default),
                        if raw.initial.is_none() { ", the default" } else { "" },
                        m.value
                    ),
                ),
                (Some(i), None) => self.error(
                    format!("{p}.initial"),
                    &i.referenced,
                    format!(
                        "must not exceed retry.max ({}, the default), not \"{}\"; lower it or set `max` too",
                        shown(DEFAULT_RETRY_MAX),
                        i.value
                    ),
                ),
                (None, None) => {}
            }
            return Retry::default();
        }
        Retry {
            initial: initial_or_default,
            max: max_or_default,
        }
    }

    fn upstream(&mut self, p: &str, raw: &Spanned<RawUpstream>) -> UpstreamConfig {
        let u = &raw.value;
        let mut address = None;
        let role = match (&u.address, &u.accept) {
            (Some(_), Some(accept)) => {
                self.error(
                    format!("{p}.accept"),
                    &accept.referenced,
                    "an upstream has exactly one of `address` (we connect to the receiver) and `accept` (the receiver connects in to us); remove one",
                );
                None
            }
            (None, None) => {
                self.error(
                    p,
                    &raw.referenced,
                    "missing required key `address` (or `accept`); add e.g. `address: 127.0.0.1:2576`, or `accept: 0.0.0.0:2600` for a receiver that connects in",
                );
                None
            }
            (Some(raw_address), None) if raw_address.value.trim() == "original-destination" => {
                Some(ReceiverRole::OriginalDestination)
            }
            (Some(raw_address), None) => match parse_upstream_address(&raw_address.value) {
                Ok(parsed) => {
                    address = Some(parsed.clone());
                    Some(ReceiverRole::Connect(parsed))
                }
                Err(message) => {
                    self.error(format!("{p}.address"), &raw_address.referenced, message);
                    None
                }
            },
            (None, Some(accept)) => {
                let listen = self.value(
                    format!("{p}.accept"),
                    &Some(accept.clone()),
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    parse_listen,
                );
                Some(ReceiverRole::Accept {
                    listen,
                    allow: self.receiver_allow(p, u.allow.as_ref()),
                })
            }
        };
        if let (Some(allow), None) = (&u.allow, &u.accept) {
            self.error(
                format!("{p}.allow"),
                &allow.referenced,
                "`allow` on an upstream says who may connect in to `accept`; it has no meaning with `address` (remove it)",
            );
        }
        if let (Some(_), Some(raw_tls)) = (&u.accept, &u.tls) {
            self.error(
                format!("{p}.tls"),
                &raw_tls.referenced,
                "`tls` on an upstream that accepts its receiver is not supported: the upstream tls block makes the guard a TLS client, and with `accept` it is the server; use `address` for a TLS receiver",
            );
        }
        let tls = u
            .tls
            .as_ref()
            .and_then(|t| self.client_tls(&format!("{p}.tls"), t, address.as_ref()));
        let via = self.via(p, &u.via);
        if let (Some(_), Some(raw_via)) = (&u.accept, &u.via) {
            self.error(
                format!("{p}.via"),
                &raw_via.referenced,
                "`via` sends upstream connections through a proxy; with `accept` the receiver connects in, so there is nothing to send through it (remove one)",
            );
        }
        let connections = self.value(
            format!("{p}.connections"),
            &u.connections,
            Connections::Paired,
            parse_connections,
        );
        let connect_timeout = self.value(
            format!("{p}.connect_timeout"),
            &u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            parse_positive_duration,
        );
        let ack_timeout = self.value(
            format!("{p}.ack_timeout"),
            &u.ack_timeout,
            DEFAULT_ACK_TIMEOUT,
            parse_positive_duration,
        );
        let keepalive = match &u.keepalive {
            None => Keepalive::default(),
            Some(k) => {
                let default = Keepalive::default();
                let k = &k.value;
                let mut keepalive = Keepalive {
                    time: self.value(
                        format!("{p}.keepalive.time"),
                        &k.time,
                        default.time,
                        parse_keepalive_duration,
                    ),
                    interval: self.value(
                        format!("{p}.keepalive.interval"),
                        &k.interval,
                        default.interval,
                        parse_keepalive_duration,
                    ),
                    retries: self.value(
                        format!("{p}.keepalive.retries"),
                        &k.retries,
                        default.retries,
                        parse_keepalive_retries,
                    ),
                    user_timeout: Duration::ZERO,
                };
                let probes = keepalive.time + keepalive.interval * keepalive.retries;
                keepalive.user_timeout = probes;
                if let Some(raw) = &k.user_timeout {
                    match parse_keepalive_duration(&raw.value) {
                        Ok(t) if t >= probes => keepalive.user_timeout = t,
                        Ok(_) => self.error(
                            format!("{p}.keepalive.user_timeout"),
                            &raw.referenced,
                            format!(
                                "must be at least time + interval x retries ({}), or the keepalive probes never get to finish",
                                humantime::format_duration(probes)
                            ),
                        ),
                        Err(message) => self.error(format!("{p}.keepalive.user_timeout"), &raw.referenced, message),
                    }
                }
                keepalive
            }
        };
        let max_ack_bytes = self.value(
            format!("{p}.max_ack_bytes"),
            &u.max_ack_bytes,
            DEFAULT_MAX_ACK_BYTES,
            parse_frame_size,
        );
        let idle_reconnect = self.value(
            format!("{p}.idle_reconnect"),
            &u.idle_reconnect,
            Duration::ZERO,
            parse_duration,
        );
        let idle_reconnect = (!idle_reconnect.is_zero()).then_some(idle_reconnect);
        if let (Some(_), Some(accept), Some(raw_idle)) =
            (idle_reconnect, &u.accept, &u.idle_reconnect)
        {
            let _ = accept;
            self.error(
                format!("{p}.idle_reconnect"),
                &raw_idle.referenced,
                "idle_reconnect needs `address`: with `accept` the receiver opens the connections, so the guard cannot reopen them (set keepalive instead)",
            );
        }
        let idle_reopen = self.value(
            format!("{p}.idle_reopen"),
            &u.idle_reopen,
            IdleReopen::OnDemand,
            parse_idle_reopen,
        );
        let send_proxy_protocol = self.value(
            format!("{p}.send_proxy_protocol"),
            &u.send_proxy_protocol,
            None,
            |s| parse_proxy_version(s).map(Some),
        );
        let transparent_source = self.value(
            format!("{p}.transparent_source"),
            &u.transparent_source,
            false,
            parse_bool,
        );
        if let (true, Some(raw)) = (transparent_source, &u.transparent_source) {
            let problem = if u.accept.is_some() {
                Some("transparent_source needs `address`: with `accept` the receiver opens the connection")
            } else if u.via.is_some() {
                Some("transparent_source cannot go through `via`: the proxy, not the guard, opens the connection to the receiver")
            } else if connections != Connections::Paired {
                Some("transparent_source needs `connections: paired`: a pooled connection carries many senders' messages")
            } else {
                None
            };
            if let Some(message) = problem {
                self.error(format!("{p}.transparent_source"), &raw.referenced, message);
            }
        }
        let reconnect = match &u.reconnect {
            None => Reconnect::default(),
            Some(r) => {
                let default = Reconnect::default();
                let initial = self.value(
                    format!("{p}.reconnect.initial"),
                    &r.value.initial,
                    default.initial,
                    parse_positive_duration,
                );
                let max = self.value(
                    format!("{p}.reconnect.max"),
                    &r.value.max,
                    default.max,
                    parse_positive_duration,
                );
                if max < initial {
                    self.error(
                        format!("{p}.reconnect.max"),
                        &r.referenced,
                        format!(
                            "max ({}) is shorter than initial ({}); make max at least initial",
                            humantime::format_duration(max),
                            humantime::format_duration(initial)
                        ),
                    );
                }
                Reconnect { initial, max }
            }
        };
        let (framing, release) = self.framing(&format!("{p}.framing"), &u.framing);
        UpstreamConfig {
            role: role.unwrap_or(ReceiverRole::Connect(UpstreamAddress {
                host: String::new(),
                port: 0,
            })),
            tls,
            via,
            connections,
            connect_timeout,
            ack_timeout,
            keepalive,
            max_ack_bytes,
            idle_reconnect,
            idle_reopen,
            send_proxy_protocol,
            transparent_source,
            reconnect,
            framing,
            release,
        }
    }

    /// `allow` of an upstream that accepts: who may connect in. Absent = any address (logged
    /// as a warning at start).
    fn receiver_allow(&mut self, p: &str, raw: Option<&Spanned<Vec<Text>>>) -> Allowlist {
        let Some(list) = raw else {
            return Allowlist::Any;
        };
        let entries: Vec<&str> = list.value.iter().map(|e| e.value.as_str()).collect();
        match Allowlist::parse(&entries) {
            Ok(allow) => allow,
            Err((j, message)) => {
                let at = list
                    .value
                    .get(j)
                    .map_or(&list.referenced, |e| &e.referenced);
                self.error(format!("{p}.allow[{j}]"), at, message);
                Allowlist::Networks(Vec::new())
            }
        }
    }

    /// A `framing:` block (`p` is its YAML path). Each byte is checked where it is written,
    /// then [`Framing::new`] judges the combination (reported at the block).
    fn framing(&mut self, p: &str, raw: &Option<Spanned<RawFraming>>) -> (Framing, MllpRelease) {
        let Some(raw) = raw else {
            return (Framing::MLLP, MllpRelease::One);
        };
        let f = &raw.value;
        let mut bytes_ok = true;
        let start = match &f.start {
            None => Framing::MLLP.start(),
            Some(text) => match parse_byte(&text.value) {
                Ok(b) => b,
                Err(message) => {
                    self.error(format!("{p}.start"), &text.referenced, message);
                    bytes_ok = false;
                    0
                }
            },
        };
        let end = match &f.end {
            None => Framing::MLLP.end().to_vec(),
            Some(list) => {
                let mut end = Vec::new();
                for (j, text) in list.value.iter().enumerate() {
                    match parse_byte(&text.value) {
                        Ok(b) => end.push(b),
                        Err(message) => {
                            self.error(format!("{p}.end[{j}]"), &text.referenced, message);
                            bytes_ok = false;
                        }
                    }
                }
                if !(1..=2).contains(&list.value.len()) {
                    self.error(
                        format!("{p}.end"),
                        &list.referenced,
                        format!(
                            "must be one or two bytes, e.g. [0x1C, 0x0D] or [0x1C], not {}",
                            list.value.len()
                        ),
                    );
                    bytes_ok = false;
                }
                end
            }
        };
        let mut framing = Framing::MLLP;
        if bytes_ok {
            match Framing::new(start, &end) {
                Ok(valid) => framing = valid,
                Err(message) => self.error(p, &raw.referenced, message),
            }
        }
        let release = self.value(
            format!("{p}.release"),
            &f.release,
            MllpRelease::One,
            parse_release,
        );
        (framing, release)
    }

    /// Resolves a file path from the config and checks the file can be opened, reporting it
    /// with the path as written. `None` when it cannot be used.
    fn file(&mut self, path: String, raw: &Text) -> Option<PathBuf> {
        let written = raw.value.trim();
        if written.is_empty() {
            self.error(path, &raw.referenced, "a file path is required here");
            return None;
        }
        let resolved = self.base_dir.join(written);
        let problem = match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_dir() => Some(format!(
                "\"{written}\" is a directory; give the path of a PEM file"
            )),
            Ok(_) => match std::fs::File::open(&resolved) {
                Ok(_) => None,
                Err(e) => Some(self.io_message(written, &e)),
            },
            Err(e) => Some(self.io_message(written, &e)),
        };
        match problem {
            None => {
                self.inputs.push(resolved.clone());
                Some(resolved)
            }
            Some(message) => {
                self.error(path, &raw.referenced, message);
                None
            }
        }
    }

    fn io_message(&self, written: &str, e: &io::Error) -> String {
        let relative_note = if Path::new(written).is_relative() {
            format!(
                " (relative paths are resolved from the config file's directory, here {})",
                self.base_dir.display()
            )
        } else {
            String::new()
        };
        match e.kind() {
            io::ErrorKind::NotFound => format!("file \"{written}\" not found{relative_note}"),
            io::ErrorKind::PermissionDenied => format!(
                "file \"{written}\" is not readable by this user (permission denied); fix its permissions or ownership"
            ),
            _ => format!("file \"{written}\" cannot be read: {e}"),
        }
    }

    /// Records a [`TlsError`] against the YAML key that named the file it is about.
    fn tls_error(
        &mut self,
        err: TlsError,
        p: &str,
        tls_at: &Location,
        files: &[(PemRole, String, &Text)],
    ) {
        let target = err.file().and_then(|(role, path)| {
            files
                .iter()
                .find(|(r, _, raw)| {
                    *r == role && tls_policy::same_file(self.base_dir, &raw.value, path)
                })
                .or_else(|| files.iter().find(|(r, _, _)| *r == role))
        });
        let (path, at, written) = match target {
            Some((_, key, raw)) => (
                format!("{p}.{key}"),
                &raw.referenced,
                Some(raw.value.trim()),
            ),
            None => (p.to_string(), tls_at, None),
        };
        let message = match (&err, written) {
            (TlsError::File { problem, .. }, Some(written)) => match problem {
                tls::FileProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::Pki { problem, .. }, Some(written)) => match problem {
                crate::tls::pki::PkiProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::KeyMismatch { .. }, Some(written)) => {
                let cert = files
                    .iter()
                    .find(|(r, _, _)| *r == PemRole::Certificate)
                    .map_or("", |(_, _, raw)| raw.value.trim());
                format!(
                    "the private key \"{written}\" does not match the certificate \"{cert}\" (their public keys differ); use the key the certificate was issued for"
                )
            }
            _ => err.to_string(),
        };
        self.error(path, at, message);
    }

    fn server_tls(&mut self, p: &str, raw: &Spanned<RawServerTls>) -> Option<ServerTls> {
        let t = &raw.value;
        let cert = self.file(format!("{p}.cert"), &t.cert);
        let pkcs12 = crate::tls::pki::is_pkcs12(Path::new(t.cert.value.trim()));
        let key = match (&t.key, pkcs12) {
            (Some(k), false) => self.file(format!("{p}.key"), k),
            (None, true) => cert.clone(),
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    format!(
                        "`key` is not used with a PKCS#12 certificate (the key is inside \"{}\"); remove it",
                        t.cert.value.trim()
                    ),
                );
                None
            }
            (None, false) => {
                self.error(
                    p,
                    &raw.referenced,
                    "missing required key `key`; add `key: path/to/key.pem` (the certificate's private key), or give a PKCS#12 file (.p12/.pfx) as `cert`",
                );
                None
            }
        };
        let password = self.password_file(p, &t.password_file);
        let client_ca = match &t.client_ca {
            Some(ca) => Some(self.file(format!("{p}.client_ca"), ca)?),
            None => None,
        };
        let policy = self.tls_policy(p, &server_policy_keys(t));
        if client_ca.is_none() {
            let needs_ca = [
                ("crl", t.crl.as_ref().map(|c| &c.referenced)),
                (
                    "allowed_identities",
                    t.allowed_identities.as_ref().map(|a| &a.referenced),
                ),
            ];
            for (name, at) in needs_ca {
                if let Some(at) = at {
                    self.error(
                        format!("{p}.{name}"),
                        at,
                        format!("`{name}` applies to client certificates, which this listener does not ask for; set `client_ca` too, or remove `{name}`"),
                    );
                }
            }
            if t.crl.is_some() || t.allowed_identities.is_some() {
                return None;
            }
        }
        let (cert, key, password, policy) = (cert?, key?, password.ok()?, policy?);
        let mut files = vec![(PemRole::Certificate, "cert".to_string(), &t.cert)];
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        if let Some(ca) = &t.client_ca {
            files.push((PemRole::TrustedCa, "client_ca".to_string(), ca));
        }
        for (key, raw) in tls_policy::crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = tls::Identity {
            cert: &cert,
            key: Some(&key),
            password: password.as_ref(),
        };
        match tls::server_config_with(&identity, client_ca.as_deref(), &policy) {
            Ok((config, material)) => Some(ServerTls {
                cert,
                key,
                client_ca,
                policy,
                material,
                config,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }

    fn client_tls(
        &mut self,
        p: &str,
        raw: &Spanned<RawClientTls>,
        address: Option<&UpstreamAddress>,
    ) -> Option<ClientTls> {
        let t = &raw.value;
        let server_name = match &t.server_name {
            Some(name) => match parse_server_name(&name.value) {
                Ok(server_name) => Some(server_name),
                Err(message) => {
                    self.error(format!("{p}.server_name"), &name.referenced, message);
                    None
                }
            },
            // The address host was validated as a DNS name or an IP address already.
            None => address.and_then(|a| ServerName::try_from(a.host.clone()).ok()),
        };
        let ca = self.file(format!("{p}.ca"), &t.ca);
        let cert = t.cert.as_ref().map(|c| self.file(format!("{p}.cert"), c));
        let pkcs12 = t
            .cert
            .as_ref()
            .is_some_and(|c| crate::tls::pki::is_pkcs12(Path::new(c.value.trim())));
        let key = match (&t.key, pkcs12) {
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    "`key` is not used with a PKCS#12 certificate (the key is inside it); remove it",
                );
                Some(None)
            }
            (None, true) => cert.clone(),
            (k, false) => k.as_ref().map(|k| self.file(format!("{p}.key"), k)),
        };
        match (&t.cert, &t.key) {
            (Some(c), None) if !pkcs12 => self.error(
                format!("{p}.cert"),
                &c.referenced,
                "a client certificate needs its private key: add `key` next to `cert`",
            ),
            (None, Some(k)) => self.error(
                format!("{p}.key"),
                &k.referenced,
                "`key` is set but `cert` is not: add the client certificate as `cert`, or remove `key`",
            ),
            _ => {}
        }
        let password = self.password_file(p, &t.password_file);
        let policy = self.tls_policy(p, &client_policy_keys(t));
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (Some(cert?), Some(key?)),
            (None, None) => (None, None),
            _ => return None,
        };
        let ca = ca?;
        let server_name = server_name?;
        let (password, policy) = (password.ok()?, policy?);
        let mut files = vec![(PemRole::TrustedCa, "ca".to_string(), &t.ca)];
        if let Some(c) = &t.cert {
            files.push((PemRole::Certificate, "cert".to_string(), c));
        }
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        for (key, raw) in tls_policy::crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = cert.as_deref().map(|cert| tls::Identity {
            cert,
            key: key.as_deref(),
            password: password.as_ref(),
        });
        match tls::client_config_with(&ca, identity.as_ref(), &policy) {
            Ok((config, material)) => Some(ClientTls {
                ca,
                server_name,
                cert,
                key,
                policy,
                material,
                config,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }
}

fn server_policy_keys(t: &RawServerTls) -> tls_policy::RawPolicy<'_> {
    tls_policy::RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}

fn client_policy_keys(t: &RawClientTls) -> tls_policy::RawPolicy<'_> {
    tls_policy::RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}

/// Whether two listen addresses cannot both be bound. Port 0 never clashes (each bind gets its
/// own port). An unspecified IPv4 address covers every IPv4 address of the port; an unspecified
/// IPv6 address covers every address of the port, since Linux binds `[::]` dual-stack by default.
fn listen_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V6(w) if w.is_unspecified() => true,
        IpAddr::V4(w) if w.is_unspecified() => other.is_ipv4(),
        _ => false,
    };
    ia == ib || covers(ia, ib) || covers(ib, ia)
}

/// Fuzz entry (the `config` fuzz target calls this): parses `data` (lossily decoded as UTF-8)
/// as a config file. Must never panic, whatever the bytes; every error must carry a message and
/// display on one line. Relative paths resolve from a directory that does not exist, and texts
/// naming device or kernel trees are skipped, so a run never reads from `/dev/zero` or a FIFO.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|tree| text.contains(tree))
    {
        return;
    }
    let base = Path::new("/nonexistent/mllp-guard-fuzz");
    match Config::parse(&text, Path::new("fuzz.yaml"), base) {
        Ok(config) => {
            assert!(!config.routes.is_empty(), "a valid config has a route");
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error result holds an error");
            for e in &errors.0 {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests;
