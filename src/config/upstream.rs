//! A route's `upstream:` block, and each named upstream's: who opens the connection (`address`,
//! `original-destination`, or `accept` with its `allow`), TLS towards the receiver, `via`,
//! `connections`, the timeouts, `keepalive`, `idle_reconnect`, PROXY headers, `local_address`, the `reconnect`
//! backoff and the receiver side's framing.
//!
//! An `impl Validator` block. Knows nothing of the route around the block: the checks that
//! involve the route's sender or delivery are made in `route.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::{
    Connections, HealthCheck, IdleReopen, Keepalive, ReceiverRole, Reconnect, UpstreamAddress,
    UpstreamConfig, DEFAULT_ACK_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEALTH_CHECK,
    DEFAULT_MAX_ACK_BYTES,
};
use super::raw::{RawUpstream, Text};
use super::scalars::{
    parse_bool, parse_connections, parse_duration, parse_frame_size, parse_idle_reopen,
    parse_keepalive_duration, parse_keepalive_retries, parse_listen, parse_positive_duration,
    parse_proxy_version, parse_upstream_address,
};
use super::socket::parse_local_address;
use super::validator::Validator;
use crate::firewall::policy::Allowlist;

impl Validator<'_> {
    pub(super) fn upstream(&mut self, p: &str, raw: &Spanned<RawUpstream>) -> UpstreamConfig {
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
        let local_address = self.value(format!("{p}.local_address"), &u.local_address, None, |s| {
            parse_local_address(s).map(Some)
        });
        if let (Some(_), Some(raw)) = (local_address, &u.local_address) {
            let problem = if transparent_source {
                Some("local_address and transparent_source both choose the source address of the connection to the receiver (a fixed one, or each sender's own); remove one")
            } else if u.accept.is_some() {
                Some("local_address needs `address`: with `accept` the receiver opens the connection")
            } else {
                None
            };
            if let Some(message) = problem {
                self.error(format!("{p}.local_address"), &raw.referenced, message);
            }
        }
        let socket = self.socket(p, &u.socket);
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
        let (framing, release, commit_timeout) = self.framing(&format!("{p}.framing"), &u.framing);
        let health_check = u.health_check.as_ref().map(|raw| {
            let h = &raw.value;
            let interval = self.value(
                format!("{p}.health_check.interval"),
                &h.interval,
                DEFAULT_HEALTH_CHECK.interval,
                parse_positive_duration,
            );
            let timeout = self.value(
                format!("{p}.health_check.timeout"),
                &h.timeout,
                DEFAULT_HEALTH_CHECK.timeout,
                parse_positive_duration,
            );
            if u.accept.is_some() {
                self.error(
                    format!("{p}.health_check"),
                    &raw.referenced,
                    "health_check connects to the receiver; with `accept` the receiver connects in (remove it)",
                );
            } else if matches!(role, Some(ReceiverRole::OriginalDestination)) {
                self.error(
                    format!("{p}.health_check"),
                    &raw.referenced,
                    "health_check needs a fixed address; with original-destination each connection goes elsewhere (remove it)",
                );
            }
            HealthCheck { interval, timeout }
        });
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
            local_address,
            socket,
            reconnect,
            framing,
            release,
            commit_timeout,
            health_check,
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
}
