//! `mllp-guard check --print`: the effective configuration as YAML, every default filled in,
//! paths resolved, in the shape of the config file (so it can be read, diffed, or used as a
//! starting point).
//!
//! Owns the rendering only; it reads the typed [`Config`] and must not know how any value is
//! validated. Secrets are not in the typed config (passwords stay in their files), so nothing
//! secret can be printed.

use std::fmt::{Display, Write as _};
use std::time::Duration;

use crate::config::{
    Batches, ClientTls, Config, Connections, Delivery, IdleReopen, MllpRelease, MultipleMessages,
    OnUpstreamFailure, ReceiverRole, ReplyAction, Route, SenderRole, ServerTls, UpstreamConfig,
};
use crate::firewall::rules::{Action, Rule};
use crate::wire::codec::Framing;

/// The whole effective config as YAML.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    let w = &mut out;
    line(w, 0, "shutdown_grace", dur(config.shutdown_grace));
    if let Some(dir) = &config.state_dir {
        line(w, 0, "state_dir", quoted(dir.display()));
    }
    line(w, 0, "log_payloads", config.log_payloads);
    line(w, 0, "max_buffered_bytes", config.max_buffered_bytes);
    if let Some(file) = &config.audit.file {
        key(w, 0, "audit");
        line(w, 1, "file", quoted(file.display()));
    }
    if let Some(admin) = &config.admin {
        key(w, 0, "admin");
        line(w, 1, "listen", admin.listen);
        if let Some(file) = &admin.token_file {
            line(w, 1, "token_file", quoted(file.display()));
        }
        line(w, 1, "protect_reads", admin.protect_reads);
        let hosts: Vec<String> = admin.allowed_hosts.iter().map(quoted).collect();
        line(w, 1, "allowed_hosts", format!("[{}]", hosts.join(", ")));
        if let Some(tls) = &admin.tls {
            server_tls(w, 1, tls);
        }
    }
    if !config.upstreams.is_empty() {
        key(w, 0, "upstreams");
        for (name, upstream) in &config.upstreams {
            key(w, 1, name);
            self::upstream(w, 2, upstream);
        }
    }
    key(w, 0, "routes");
    for r in &config.routes {
        route(w, r);
    }
    notify(w, &config.notify);
    out
}

/// `notify`, when it has webhooks. A URL's query and header values may hold tokens: they are
/// named in a comment, not printed.
fn notify(w: &mut String, n: &crate::config::Notify) {
    if n.webhooks.is_empty() {
        return;
    }
    key(w, 0, "notify");
    key(w, 1, "webhooks");
    for hook in &n.webhooks {
        let url = &hook.url;
        let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        let shown = format!(
            "{}://{}{port}{}",
            url.scheme_str().unwrap_or("http"),
            url.host().unwrap_or(""),
            url.path()
        );
        let _ = writeln!(w, "    - url: {}", quoted(shown));
        if url.query().is_some() {
            let _ = writeln!(w, "      # the URL's query is not shown");
        }
        let events: Vec<&str> = hook.events.iter().map(|e| e.as_str()).collect();
        line(w, 3, "events", format_args!("[{}]", events.join(", ")));
        opt(
            w,
            3,
            "secret_file",
            hook.secret_file.as_ref().map(|p| quoted(p.display())),
        );
        line(w, 3, "timeout", dur(hook.timeout));
        line(w, 3, "max_pending", hook.max_pending);
        opt(w, 3, "ca", hook.ca.as_ref().map(|p| quoted(p.display())));
        if !hook.headers.is_empty() {
            let names: Vec<&str> = hook.headers.iter().map(|(n, _)| n.as_str()).collect();
            let _ = writeln!(
                w,
                "      # headers: {} (values not shown)",
                names.join(", ")
            );
        }
    }
    let backlog = &n.queue_backlog;
    if backlog.pending.is_some() || backlog.oldest.is_some() {
        key(w, 1, "queue_backlog");
        opt(w, 2, "pending", backlog.pending);
        opt(w, 2, "oldest", backlog.oldest.map(dur));
    }
    key(w, 1, "certificate_expiring");
    line(w, 2, "within", dur(n.certificate_expiring_within));
}

fn route(w: &mut String, r: &Route) {
    let _ = writeln!(w, "  - name: {}", r.name);
    let i = 2;
    match &r.sender {
        SenderRole::Listen(addr) => line(w, i, "listen", quoted(addr)),
        SenderRole::Dial(addr) => line(w, i, "dial", quoted(addr)),
    }
    line(w, i, "transparent", r.transparent);
    if let Some(proxies) = &r.proxy_protocol {
        line(
            w,
            i,
            "proxy_protocol",
            format_args!(
                "{{ accept: {}, from: {} }}",
                proxies.accept,
                allow_list(&proxies.from)
            ),
        );
    }
    if let Some(tls) = &r.tls {
        server_tls(w, i, tls);
    }
    line(w, i, "allow", allow_list(&r.allow));
    line(w, i, "max_connections", r.max_connections);
    line(w, i, "max_message_bytes", r.max_message_bytes);
    line(w, i, "receive_timeout", dur(r.receive_timeout));
    line(
        w,
        i,
        "idle_timeout",
        r.idle_timeout.map_or("0s".into(), dur),
    );
    line(w, i, "handshake_timeout", dur(r.handshake_timeout));
    line(
        w,
        i,
        "on_upstream_failure",
        match r.on_upstream_failure {
            OnUpstreamFailure::Nack => "nack",
            OnUpstreamFailure::Close => "close",
        },
    );
    line(w, i, "send_timeout", dur(r.send_timeout));
    socket(w, i, &r.socket);
    line(
        w,
        i,
        "multiple_messages",
        match r.multiple_messages {
            MultipleMessages::Refuse => "refuse",
            MultipleMessages::Inspect => "inspect",
        },
    );
    line(
        w,
        i,
        "batches",
        match r.batches {
            Batches::Inspect => "inspect",
            Batches::Refuse => "refuse",
        },
    );
    framing(w, i, r.framing, r.release, r.commit_timeout());
    match &r.delivery {
        Delivery::Forward => line(w, i, "delivery", "forward"),
        Delivery::StoreAndForward(c) => {
            line(w, i, "delivery", "store-and-forward");
            key(w, i, "queue");
            let _ = writeln!(
                w,
                "{}# in {} (state_dir/route name)",
                "  ".repeat(i + 1),
                c.queue_dir.display()
            );
            line(w, i + 1, "max_bytes", c.max_bytes);
            line(w, i + 1, "max_messages", c.max_messages);
            line(w, i + 1, "segment_bytes", c.segment_bytes);
            if let Some(u) = c.unready_when {
                let mut parts = Vec::new();
                if let Some(n) = u.pending {
                    parts.push(format!("pending: {n}"));
                }
                if let Some(d) = u.oldest {
                    parts.push(format!("oldest: {}", dur(d)));
                }
                line(
                    w,
                    i + 1,
                    "unready_when",
                    format!("{{ {} }}", parts.join(", ")),
                );
            }
            line(w, i, "ack_mode", c.ack_mode.as_str());
            line(
                w,
                i,
                "retry",
                format!(
                    "{{ initial: {}, max: {}, max_attempts: {}, max_age: {} }}",
                    dur(c.retry.initial),
                    dur(c.retry.max),
                    c.retry.max_attempts,
                    c.retry.max_age.map_or_else(|| "0s".to_string(), dur)
                ),
            );
            line(
                w,
                i,
                "on_reply",
                format!(
                    "{{ AE: {}, AR: {} }}",
                    reply_action(c.on_reply.ae),
                    reply_action(c.on_reply.ar)
                ),
            );
            line(
                w,
                i,
                "duplicate_window",
                c.duplicate_window.map_or("0s".into(), dur),
            );
        }
    }
    let l = &r.limits;
    key(w, i, "limits");
    opt(w, i + 1, "messages_per_second", l.messages_per_second);
    opt(w, i + 1, "burst", l.burst);
    opt(w, i + 1, "bytes_per_second", l.bytes_per_second);
    opt(w, i + 1, "connections_per_minute", l.connections_per_minute);
    opt(
        w,
        i + 1,
        "max_connections_per_source",
        l.max_connections_per_source,
    );
    line(
        w,
        i + 1,
        "on_limit",
        format!("{:?}", l.on_limit).to_lowercase(),
    );
    line(w, i + 1, "max_tracked_sources", l.max_tracked_sources);
    if r.rules.is_empty() {
        line(w, i, "rules", "[]");
    } else {
        key(w, i, "rules");
        for rule in &r.rules {
            self::rule(w, i, rule);
        }
    }
    key(w, i, "upstream");
    upstream(w, i + 1, &r.upstream);
}

fn upstream(w: &mut String, i: usize, u: &UpstreamConfig) {
    match &u.role {
        ReceiverRole::Connect(addr) => line(w, i, "address", quoted(addr)),
        ReceiverRole::OriginalDestination => line(w, i, "address", "original-destination"),
        ReceiverRole::Accept { listen, allow } => {
            line(w, i, "accept", quoted(listen));
            line(w, i, "allow", allow_list(allow));
        }
    }
    if let Some(via) = &u.via {
        line(w, i, "via", quoted(via));
    }
    if let Some(tls) = &u.tls {
        client_tls(w, i, tls);
    }
    line(
        w,
        i,
        "connections",
        match u.connections {
            Connections::Paired => "paired".to_string(),
            Connections::Pool(n) => n.to_string(),
        },
    );
    line(w, i, "connect_timeout", dur(u.connect_timeout));
    line(w, i, "ack_timeout", dur(u.ack_timeout));
    line(w, i, "max_ack_bytes", u.max_ack_bytes);
    let k = &u.keepalive;
    line(
        w,
        i,
        "keepalive",
        format!(
            "{{ time: {}, interval: {}, retries: {}, user_timeout: {} }}",
            dur(k.time),
            dur(k.interval),
            k.retries,
            dur(k.user_timeout)
        ),
    );
    line(
        w,
        i,
        "idle_reconnect",
        u.idle_reconnect.map_or("0s".into(), dur),
    );
    line(
        w,
        i,
        "idle_reopen",
        match u.idle_reopen {
            IdleReopen::OnDemand => "on-demand",
            IdleReopen::AtOnce => "at-once",
        },
    );
    line(w, i, "transparent_source", u.transparent_source);
    if let Some(h) = u.health_check {
        line(
            w,
            i,
            "health_check",
            format!(
                "{{ interval: {}, timeout: {} }}",
                dur(h.interval),
                dur(h.timeout)
            ),
        );
    }
    if let Some(ip) = u.local_address {
        line(w, i, "local_address", ip);
    }
    socket(w, i, &u.socket);
    if let Some(version) = u.send_proxy_protocol {
        line(w, i, "send_proxy_protocol", version);
    }
    line(
        w,
        i,
        "reconnect",
        format!(
            "{{ initial: {}, max: {} }}",
            dur(u.reconnect.initial),
            dur(u.reconnect.max)
        ),
    );
    framing(w, i, u.framing, u.release, u.commit_timeout());
}

/// A `socket:` block: the sizes in bytes, unset keys left out (the kernel's defaults).
fn socket(w: &mut String, i: usize, s: &crate::config::SocketOptions) {
    let mut keys = Vec::new();
    if let Some(n) = s.send_buffer {
        keys.push(format!("send_buffer: {n}"));
    }
    if let Some(n) = s.receive_buffer {
        keys.push(format!("receive_buffer: {n}"));
    }
    if let Some(d) = s.linger {
        keys.push(format!("linger: {}", dur(d)));
    }
    keys.push(format!("nodelay: {}", s.nodelay));
    line(w, i, "socket", format!("{{ {} }}", keys.join(", ")));
}

fn server_tls(w: &mut String, i: usize, t: &ServerTls) {
    key(w, i, "tls");
    line(w, i + 1, "cert", quoted(t.cert.display()));
    line(w, i + 1, "key", quoted(t.key.display()));
    if let Some(ca) = &t.client_ca {
        line(w, i + 1, "client_ca", quoted(ca.display()));
    }
    policy(w, i + 1, &t.policy);
}

fn client_tls(w: &mut String, i: usize, t: &ClientTls) {
    key(w, i, "tls");
    line(w, i + 1, "ca", quoted(t.ca.display()));
    line(w, i + 1, "server_name", quoted(t.server_name.to_str()));
    if let (Some(cert), Some(key_file)) = (&t.cert, &t.key) {
        line(w, i + 1, "cert", quoted(cert.display()));
        line(w, i + 1, "key", quoted(key_file.display()));
    }
    policy(w, i + 1, &t.policy);
}

fn policy(w: &mut String, i: usize, p: &crate::tls::Policy) {
    line(
        w,
        i,
        "min_version",
        match p.min_version {
            crate::tls::MinVersion::Tls12 => "\"1.2\"",
            crate::tls::MinVersion::Tls13 => "\"1.3\"",
        },
    );
    let suites: Vec<String> = p
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    if suites.is_empty() {
        let _ = writeln!(
            w,
            "{}# cipher_suites: not set, every suite of the provider",
            "  ".repeat(i)
        );
    } else {
        line(w, i, "cipher_suites", format!("[{}]", suites.join(", ")));
    }
    if !p.crls.is_empty() {
        let crls: Vec<String> = p.crls.iter().map(|c| quoted(c.display())).collect();
        line(w, i, "crl", format!("[{}]", crls.join(", ")));
        line(
            w,
            i,
            "crl_expired",
            match p.crl_expired {
                crate::tls::CrlExpired::FailClosed => "fail-closed",
                crate::tls::CrlExpired::FailOpen => "fail-open",
            },
        );
    }
    if !p.allowed_identities.is_empty() {
        let ids: Vec<String> = p.allowed_identities.iter().map(quoted).collect();
        line(w, i, "allowed_identities", format!("[{}]", ids.join(", ")));
    }
}

fn rule(w: &mut String, i: usize, rule: &Rule) {
    let pad = "  ".repeat(i);
    let _ = writeln!(w, "{pad}  - name: {}", rule.name);
    let m = &rule.matcher;
    let mut fields: Vec<(&str, String)> = Vec::new();
    let list = |items: &[String]| format!("[{}]", items.join(", "));
    if let Some(nets) = &m.source {
        fields.push((
            "source",
            list(&nets.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        ));
    }
    for (name, patterns) in [
        ("tls_identity", &m.tls_identity),
        ("sending_application", &m.sending_application),
        ("sending_facility", &m.sending_facility),
        ("receiving_application", &m.receiving_application),
        ("receiving_facility", &m.receiving_facility),
        ("version", &m.version),
        ("processing_id", &m.processing_id),
    ] {
        if let Some(patterns) = patterns {
            fields.push((name, list(&patterns.iter().map(quoted).collect::<Vec<_>>())));
        }
    }
    if let Some(types) = &m.message_type {
        fields.push((
            "message_type",
            list(&types.iter().map(quoted).collect::<Vec<_>>()),
        ));
    }
    if fields.is_empty() {
        let _ = writeln!(w, "{pad}    match: {{}}");
    } else {
        let _ = writeln!(w, "{pad}    match:");
        for (name, value) in fields {
            let _ = writeln!(w, "{pad}      {name}: {value}");
        }
    }
    let action = match &rule.action {
        Action::Allow => "allow".to_string(),
        Action::Reject => "reject".to_string(),
        Action::Drop => "drop".to_string(),
        Action::Route(name) => format!("{{ route: {name} }}"),
    };
    let _ = writeln!(w, "{pad}    action: {action}");
}

fn framing(w: &mut String, i: usize, f: Framing, release: MllpRelease, commit: Duration) {
    let end: Vec<String> = f.end().iter().map(|b| format!("0x{b:02X}")).collect();
    line(
        w,
        i,
        "framing",
        format!(
            "{{ start: 0x{:02X}, end: [{}], release: {}, commit_timeout: {} }}",
            f.start(),
            end.join(", "),
            match release {
                MllpRelease::One => 1,
                MllpRelease::Two => 2,
            },
            dur(commit)
        ),
    );
}

/// An allowlist as a YAML flow sequence of quoted entries (`::1/128` needs quotes).
fn allow_list(allow: &crate::firewall::policy::Allowlist) -> String {
    if matches!(allow, crate::firewall::policy::Allowlist::Networks(nets) if nets.is_empty()) {
        return "[]".to_string();
    }
    let text = allow.to_string();
    let entries: Vec<String> = text
        .split(", ")
        .filter(|e| !e.is_empty())
        .map(quoted)
        .collect();
    format!("[{}]", entries.join(", "))
}

fn reply_action(a: ReplyAction) -> &'static str {
    match a {
        ReplyAction::Retry => "retry",
        ReplyAction::DeadLetter => "dead-letter",
        ReplyAction::Accept => "accept",
    }
}

fn key(w: &mut String, indent: usize, name: &str) {
    let _ = writeln!(w, "{}{name}:", "  ".repeat(indent));
}

fn line(w: &mut String, indent: usize, name: &str, value: impl Display) {
    let _ = writeln!(w, "{}{name}: {value}", "  ".repeat(indent));
}

fn opt(w: &mut String, indent: usize, name: &str, value: Option<impl Display>) {
    match value {
        Some(v) => line(w, indent, name, v),
        None => line(w, indent, name, "null # off"),
    }
}

/// A YAML double-quoted string.
fn quoted(value: impl Display) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The printed config is itself a valid config that means the same.
    #[test]
    fn the_effective_config_loads_back_to_the_same_settings() {
        let yaml = "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [127.0.0.0/8]\n    rules:\n      - name: no-test\n        match: { processing_id: [T], message_type: [\"ADT^A0*\"] }\n        action: reject\n    limits: { messages_per_second: 50 }\n    upstream:\n      address: ehr.example.org:2576\n      idle_reconnect: 4m\n";
        let config = Config::parse(yaml, Path::new("guard.yaml"), Path::new("/etc")).unwrap();
        let printed = render(&config);
        assert!(printed.contains("receive_timeout: 30s"), "{printed}");
        assert!(printed.contains("idle_reconnect: 4m"), "{printed}");
        assert!(printed.contains("messages_per_second: 50"), "{printed}");
        let again = Config::parse(&printed, Path::new("printed.yaml"), Path::new("/etc"))
            .unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(render(&again), printed);
    }
}
