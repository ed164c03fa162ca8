//! A route's `delivery`, and the custody keys that `store-and-forward` reads: `queue` (with its
//! embedded or NATS JetStream backend, and `dead_letters`, the dead letters' own limits on
//! both), `ack_mode`, `retry`, `on_reply` and `duplicate_window`; and that no route's stream is
//! another's dead-letter stream.
//!
//! An `impl Validator` block. Knows nothing of the route's sender or upstream: the route passes
//! in the queue directory and its `max_message_bytes`.

use std::path::Path;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::{
    CustodyConfig, Delivery, JetStreamQueue, NatsTls, OnReply, QueueBackend, Retry, Route,
    UnreadyWhen, DEFAULT_ACK_MODE, DEFAULT_DEAD_LETTERS, DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_JETSTREAM_DUPLICATE_WINDOW, DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
    DEFAULT_JETSTREAM_REPLICAS, DEFAULT_JETSTREAM_TAKEOVER, DEFAULT_ON_REPLY_AE,
    DEFAULT_ON_REPLY_AR, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES,
    DEFAULT_QUEUE_SEGMENT_BYTES, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
};
use super::raw::{RawJetStream, RawQueue, RawRetry, RawRoute, Text};
use super::scalars::{
    parse_ack_mode, parse_count, parse_delivery, parse_duration, parse_nats_server,
    parse_positive_duration, parse_queue_size, parse_reply_action, parse_stream_name, DeliveryKind,
};
use super::validator::Validator;

impl Validator<'_> {
    /// `delivery` and the custody keys. `max_message_bytes` is `None` when it was invalid.
    pub(super) fn delivery(
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
        let mut unready_when = None;
        let mut dead_letters = DEFAULT_DEAD_LETTERS;
        if let Some(q) = &r.queue {
            let q = &q.value;
            if let Some(raw) = &q.dead_letters {
                let d = &raw.value;
                dead_letters.max_messages = self.value(
                    format!("{p}.queue.dead_letters.max_messages"),
                    &d.max_messages,
                    DEFAULT_DEAD_LETTERS.max_messages,
                    |s| parse_count(s, 1).map(|n| n as u64),
                );
                dead_letters.max_bytes = self.value(
                    format!("{p}.queue.dead_letters.max_bytes"),
                    &d.max_bytes,
                    DEFAULT_DEAD_LETTERS.max_bytes,
                    parse_queue_size,
                );
                if let (Some(raw), Some(largest)) = (&d.max_bytes, max_message_bytes) {
                    if parse_queue_size(&raw.value).is_ok()
                        && dead_letters.max_bytes < largest as u64
                    {
                        self.error(
                            format!("{p}.queue.dead_letters.max_bytes"),
                            &raw.referenced,
                            format!("must be at least this route's max_message_bytes ({largest} bytes) so that any message can be dead-lettered"),
                        );
                    }
                }
            }
            unready_when = q.unready_when.as_ref().map(|raw| {
                let u = &raw.value;
                let pending = self.value(
                    format!("{p}.queue.unready_when.pending"),
                    &u.pending,
                    None,
                    |s| parse_count(s, 1).map(|n| Some(n as u64)),
                );
                let oldest = self.value(
                    format!("{p}.queue.unready_when.oldest"),
                    &u.oldest,
                    None,
                    |s| parse_positive_duration(s).map(Some),
                );
                if u.pending.is_none() && u.oldest.is_none() {
                    self.error(
                        format!("{p}.queue.unready_when"),
                        &raw.referenced,
                        "give `pending` (messages waiting), `oldest` (how long the oldest waits) or both, e.g. `unready_when: { pending: 1000, oldest: 10m }`",
                    );
                }
                UnreadyWhen { pending, oldest }
            });
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
            unready_when,
            dead_letters,
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

    /// No route's JetStream stream may be another route's dead-letter stream (`<S>_DEAD`, which
    /// takes `<S>.dead`): the two would be one stream.
    pub(super) fn dead_letter_streams_apart(
        &mut self,
        raw: &[Spanned<RawRoute>],
        routes: &[Route],
    ) {
        let stream_of = |route: &Route| match &route.delivery {
            Delivery::StoreAndForward(CustodyConfig {
                backend: QueueBackend::JetStream(js),
                ..
            }) if !js.stream.is_empty() => Some(js.stream.clone()),
            _ => None,
        };
        let streams: Vec<Option<String>> = routes.iter().map(stream_of).collect();
        for (j, taken) in streams.iter().enumerate() {
            let Some(taken) = taken else { continue };
            let owner = streams.iter().enumerate().find(|(_, s)| {
                s.as_deref()
                    .is_some_and(|s| taken.strip_suffix("_DEAD") == Some(s))
            });
            let at = raw.get(j).and_then(|r| {
                let jetstream = r.value.queue.as_ref()?.value.jetstream.as_ref()?;
                jetstream.value.stream.as_ref().map(|s| s.referenced)
            });
            if let (Some((i, _)), Some(at)) = (owner, at) {
                self.error(
                    format!("routes[{j}].queue.jetstream.stream"),
                    &at,
                    format!(
                        "\"{taken}\" is the dead-letter stream of routes[{i}] (a route's dead letters live in the stream named after its own with `_DEAD` added); give this route another stream"
                    ),
                );
            }
        }
    }

    fn retry(&mut self, p: &str, raw: &RawRetry) -> Retry {
        let max_attempts = self.value(
            format!("{p}.max_attempts"),
            &raw.max_attempts,
            0,
            |s| match s.trim().parse::<u32>() {
                Ok(n) => Ok(n),
                Err(_) => Err(format!(
                    "must be a whole number of delivery attempts (0 = unlimited, the default), not \"{s}\""
                )),
            },
        );
        let max_age = self.value(format!("{p}.max_age"), &raw.max_age, None, |s| {
            parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
        });
        let backoff = self.retry_backoff(p, raw);
        Retry {
            max_attempts,
            max_age,
            ..backoff
        }
    }

    /// `retry.initial` and `retry.max` (the rest at their defaults).
    fn retry_backoff(&mut self, p: &str, raw: &RawRetry) -> Retry {
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
            ..Retry::default()
        }
    }
}
