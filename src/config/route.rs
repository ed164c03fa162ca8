//! A route's own keys: its sender side (`listen` or `dial`, `transparent`, `proxy_protocol`,
//! `tls`, `allow`), its size and time limits, `on_upstream_failure`, and the checks that tie
//! its sender, upstream and delivery together (`original-destination`, `transparent_source`).
//! Also `framing:`, which a route and an upstream both have.
//!
//! An `impl Validator` block. The upstream, delivery, TLS and firewall keys are read by their
//! own files; this one knows only what they return.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_saphyr::Spanned;

use super::firewall::UpstreamNames;
use super::model::{
    Batches, Connections, Delivery, MllpRelease, MultipleMessages, OnUpstreamFailure, ReceiverRole,
    Route, SenderRole, TrustedProxies, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_RECEIVE_TIMEOUT, DEFAULT_SEND_TIMEOUT,
};
use super::raw::{RawFraming, RawProxyProtocol, RawRoute};
use super::scalars::{
    parse_batches, parse_bool, parse_byte, parse_count, parse_duration, parse_frame_size,
    parse_listen, parse_multiple_messages, parse_on_upstream_failure, parse_positive_duration,
    parse_proxy_accept, parse_proxy_version, parse_release, parse_route_name,
    parse_upstream_address,
};
use super::validator::Validator;
use crate::firewall::policy::Allowlist;
use crate::net::proxy_protocol::Accept;
use crate::wire::codec::Framing;

/// `limits.max_connections_per_source` when not set: three quarters of `max_connections` (192
/// of the shipped 256), so that one address cannot take every slot and a quarter always stays
/// for the others, but never fewer than 8 (or all of `max_connections` when it is smaller): a
/// small route is usually fed by one interface engine with a few connections.
pub(super) fn default_connections_per_source(max_connections: usize) -> usize {
    (max_connections * 3 / 4).max(8).min(max_connections)
}

impl Validator<'_> {
    /// `proxy_protocol: { accept, from }`. A bare version is refused: it would believe a header
    /// from anyone who can reach the port, and a header can claim any address.
    fn trusted_proxies(
        &mut self,
        p: &str,
        raw: &Spanned<RawProxyProtocol>,
    ) -> Option<TrustedProxies> {
        let block = match &raw.value {
            RawProxyProtocol::Word(word) => {
                let accept = parse_proxy_version(word).map_or("any".to_string(), |v| v.to_string());
                self.error(
                    p.to_string(),
                    &raw.referenced,
                    format!(
                        "`proxy_protocol: {}` would believe a PROXY header from anyone who can reach this port, and a header can claim any address; add `from:` with your load balancers' addresses: `proxy_protocol: {{ accept: {accept}, from: [10.0.0.5/32] }}`",
                        word.trim()
                    ),
                );
                return None;
            }
            RawProxyProtocol::Block(block) => block,
        };
        let accept = self.value(
            format!("{p}.accept"),
            &block.accept,
            Accept::Any,
            parse_proxy_accept,
        );
        let example = "e.g. `from: [10.0.0.5/32]`";
        let Some(list) = &block.from else {
            self.error(
                p.to_string(),
                &raw.referenced,
                format!("missing required key `from`: the load balancers whose PROXY headers are believed, {example}"),
            );
            return None;
        };
        let entries: Vec<&str> = list.value.iter().map(|e| e.value.as_str()).collect();
        match Allowlist::parse(&entries) {
            Ok(Allowlist::Any) => self.error(
                format!("{p}.from[0]"),
                list.value.first().map_or(&list.referenced, |e| &e.referenced),
                format!("`from` names the load balancers to believe; \"any\" would let every peer claim any address ({example})"),
            ),
            Ok(from) if entries.is_empty() => {
                let _ = from;
                self.error(
                    format!("{p}.from"),
                    &list.referenced,
                    format!("`from` is empty: no PROXY header would be believed and every connection refused; name the load balancers, {example}"),
                );
            }
            Ok(from) => return Some(TrustedProxies { accept, from }),
            Err((j, message)) => {
                let at = list.value.get(j).map_or(&list.referenced, |e| &e.referenced);
                self.error(format!("{p}.from[{j}]"), at, message);
            }
        }
        None
    }

    pub(super) fn route(
        &mut self,
        i: usize,
        raw: &Spanned<RawRoute>,
        state_dir: Option<&Path>,
        upstreams: &UpstreamNames,
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
        let proxy_protocol = r
            .proxy_protocol
            .as_ref()
            .and_then(|raw| self.trusted_proxies(&format!("{p}.proxy_protocol"), raw));
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
        let socket = self.socket(&p, &r.socket);
        let send_timeout = self.value(
            format!("{p}.send_timeout"),
            &r.send_timeout,
            DEFAULT_SEND_TIMEOUT,
            parse_positive_duration,
        );
        let rules = self.rules(&p, r.rules.as_ref(), upstreams);
        let (mut limits, limits_handshake) = self.limits(&p, r.limits.as_ref());
        // Fair slots: unless set, one address may hold only a share of the route's slots.
        limits.max_connections_per_source = Some(
            limits
                .max_connections_per_source
                .unwrap_or_else(|| default_connections_per_source(max_connections)),
        );
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
        let multiple_messages = self.value(
            format!("{p}.multiple_messages"),
            &r.multiple_messages,
            MultipleMessages::Refuse,
            parse_multiple_messages,
        );
        let batches = self.value(
            format!("{p}.batches"),
            &r.batches,
            Batches::Inspect,
            parse_batches,
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
        let (framing, release, commit_timeout) = self.framing(&format!("{p}.framing"), &r.framing);
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
            commit_timeout,
            rules,
            limits,
            multiple_messages,
            batches,
            send_timeout,
            socket,
        }
    }

    /// A `framing:` block (`p` is its YAML path). Each byte is checked where it is written,
    /// then [`Framing::new`] judges the combination (reported at the block).
    pub(super) fn framing(
        &mut self,
        p: &str,
        raw: &Option<Spanned<RawFraming>>,
    ) -> (Framing, MllpRelease, Option<std::time::Duration>) {
        let Some(raw) = raw else {
            return (Framing::MLLP, MllpRelease::One, None);
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
        let commit_timeout = f.commit_timeout.as_ref().and_then(|_| {
            self.value(
                format!("{p}.commit_timeout"),
                &f.commit_timeout,
                None,
                |s| parse_positive_duration(s).map(Some),
            )
        });
        (framing, release, commit_timeout)
    }
}
