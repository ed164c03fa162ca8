//! The `notify:` key: webhooks (URL, events, signing secret, timeout, headers, CA, queue size)
//! and the thresholds of `queue_backlog` and `certificate_expiring`.
//!
//! An `impl Validator` block like the rest of the config module: it turns `RawNotify` (in
//! `raw.rs`) into a [`Notify`], recording every error with its YAML path, line and column. An
//! `https` URL's trust is checked here as it will be used: the `ca` file is loaded into a
//! rustls client config, or the system's roots must hold at least one certificate.
//!
//! Knows nothing of how events are sent (`ops/notify`).

use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::{
    Notify, NotifyEvent, QueueBacklog, Secret, Webhook, DEFAULT_CERTIFICATE_EXPIRING_WITHIN,
    DEFAULT_WEBHOOK_MAX_PENDING, DEFAULT_WEBHOOK_TIMEOUT,
};
use super::raw::{RawNotify, RawWebhook};
use super::scalars::{parse_count, parse_positive_duration};
use super::validator::Validator;

/// Request headers the guard writes itself: a webhook's `headers` may not set them.
const OWN_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "x-mllp-guard-signature",
];

impl Validator<'_> {
    pub(super) fn notify(&mut self, raw: Option<&Spanned<RawNotify>>) -> Notify {
        let Some(raw) = raw else {
            return Notify {
                certificate_expiring_within: DEFAULT_CERTIFICATE_EXPIRING_WITHIN,
                ..Notify::default()
            };
        };
        let raw = &raw.value;
        let mut webhooks = Vec::new();
        if let Some(list) = &raw.webhooks {
            for (i, hook) in list.value.iter().enumerate() {
                if let Some(hook) = self.webhook(&format!("notify.webhooks[{i}]"), &hook.value) {
                    webhooks.push(hook);
                }
            }
        }
        let queue_backlog = match &raw.queue_backlog {
            Some(backlog) => QueueBacklog {
                pending: backlog.value.pending.as_ref().map(|_| {
                    self.value(
                        "notify.queue_backlog.pending".into(),
                        &backlog.value.pending,
                        1,
                        |s| parse_count(s, 1),
                    ) as u64
                }),
                oldest: backlog.value.oldest.as_ref().map(|_| {
                    self.value(
                        "notify.queue_backlog.oldest".into(),
                        &backlog.value.oldest,
                        Duration::from_secs(1),
                        parse_positive_duration,
                    )
                }),
            },
            None => QueueBacklog::default(),
        };
        if let Some(backlog) = &raw.queue_backlog {
            if queue_backlog == QueueBacklog::default() {
                self.error(
                    "notify.queue_backlog",
                    &backlog.referenced,
                    "give `pending` (messages), `oldest` (a duration) or both, e.g. `queue_backlog: { pending: 1000, oldest: 10m }`",
                );
            }
        }
        let within = raw
            .certificate_expiring
            .as_ref()
            .and_then(|c| c.value.within.clone());
        let certificate_expiring_within = self.value(
            "notify.certificate_expiring.within".into(),
            &within,
            DEFAULT_CERTIFICATE_EXPIRING_WITHIN,
            parse_positive_duration,
        );
        Notify {
            webhooks,
            queue_backlog,
            certificate_expiring_within,
        }
    }

    fn webhook(&mut self, path: &str, raw: &RawWebhook) -> Option<Webhook> {
        let errors_before = self.errors.len();
        let url = match raw.url.value.trim().parse::<hyper::Uri>() {
            Ok(url) => Some(url),
            Err(e) => {
                self.error(
                    format!("{path}.url"),
                    &raw.url.referenced,
                    format!("\"{}\" is not a URL ({e}); write e.g. https://alerts.example.org/hooks/mllp", raw.url.value),
                );
                None
            }
        };
        let https = url.as_ref().and_then(|u| u.scheme_str()) == Some("https");
        if let Some(url) = &url {
            let problem = match (url.scheme_str(), url.host()) {
                (Some("http" | "https"), Some(host)) if !host.is_empty() => None,
                (Some("http" | "https"), _) => Some("has no host"),
                (None, _) => Some("has no scheme"),
                (Some(_), _) => Some("is not http:// or https://"),
            };
            if let Some(problem) = problem {
                self.error(
                    format!("{path}.url"),
                    &raw.url.referenced,
                    format!("\"{url}\" {problem}; a webhook URL is http:// or https://, a host and a path, e.g. https://alerts.example.org/hooks/mllp"),
                );
            }
        }
        let mut events = Vec::new();
        match &raw.events {
            None => events.extend(NotifyEvent::ALL),
            Some(list) => {
                if list.value.is_empty() {
                    self.error(
                        format!("{path}.events"),
                        &list.referenced,
                        "an empty list sends nothing; name events, or leave the key out for all of them",
                    );
                }
                for (j, name) in list.value.iter().enumerate() {
                    match NotifyEvent::ALL
                        .iter()
                        .find(|e| e.as_str() == name.value.trim())
                    {
                        Some(event) if !events.contains(event) => events.push(*event),
                        Some(_) => {}
                        None => {
                            let known: Vec<&str> =
                                NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
                            self.error(
                                format!("{path}.events[{j}]"),
                                &name.referenced,
                                format!(
                                    "unknown event \"{}\"; events are {}",
                                    name.value,
                                    known.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }
        let mut secret_file = None;
        let secret = raw.secret_file.as_ref().and_then(|raw_file| {
            let file = self.file(format!("{path}.secret_file"), raw_file)?;
            secret_file = Some(file.clone());
            match std::fs::read(&file) {
                Ok(mut bytes) => {
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    if bytes.is_empty() {
                        self.error(
                            format!("{path}.secret_file"),
                            &raw_file.referenced,
                            format!("\"{}\" is empty; put the shared secret in it (e.g. `openssl rand -hex 32 > FILE`)", raw_file.value),
                        );
                    }
                    Some(Secret(bytes))
                }
                Err(e) => {
                    let message = self.io_message(&raw_file.value, &e);
                    self.error(
                        format!("{path}.secret_file"),
                        &raw_file.referenced,
                        message,
                    );
                    None
                }
            }
        });
        let timeout = self.value(
            format!("{path}.timeout"),
            &raw.timeout,
            DEFAULT_WEBHOOK_TIMEOUT,
            parse_positive_duration,
        );
        let max_pending = self.value(
            format!("{path}.max_pending"),
            &raw.max_pending,
            DEFAULT_WEBHOOK_MAX_PENDING,
            |s| parse_count(s, 1),
        );
        let mut headers = Vec::new();
        if let Some(map) = &raw.headers {
            for (name, value) in &map.value {
                let at = format!("{path}.headers.{name}");
                if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(
                        at,
                        &value.referenced,
                        format!("\"{name}\" is not a valid HTTP header name"),
                    );
                } else if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    self.error(
                        at,
                        &value.referenced,
                        format!("{name} is set by the guard itself; remove it from headers"),
                    );
                } else if hyper::header::HeaderValue::from_str(&value.value).is_err() {
                    self.error(
                        at,
                        &value.referenced,
                        "not a valid HTTP header value (printable ASCII, no line breaks)",
                    );
                } else {
                    headers.push((name.clone(), value.value.clone()));
                }
            }
        }
        let ca = match &raw.ca {
            Some(raw_ca) if !https => {
                self.error(
                    format!("{path}.ca"),
                    &raw_ca.referenced,
                    "`ca` applies to an https:// URL only; remove it or use https://",
                );
                None
            }
            Some(raw_ca) => self.file(format!("{path}.ca"), raw_ca).and_then(|ca| {
                match crate::tls::client_config(&ca, None, None) {
                    Ok(_) => Some(ca),
                    Err(e) => {
                        self.error(format!("{path}.ca"), &raw_ca.referenced, e.to_string());
                        None
                    }
                }
            }),
            None => None,
        };
        if https && ca.is_none() && raw.ca.is_none() && crate::tls::system_roots().is_err() {
            self.error(
                format!("{path}.url"),
                &raw.url.referenced,
                "https:// needs trusted CAs, and this system has none (install ca-certificates, or give the webhook's `ca`)",
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Webhook {
            url: url?,
            events,
            secret,
            secret_file,
            timeout,
            headers,
            ca,
            max_pending,
        })
    }
}
