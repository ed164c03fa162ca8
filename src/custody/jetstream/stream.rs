//! The route's layout in NATS and the calls that make and use it: subjects, stream names,
//! message ids and headers, connecting, the route's stream, its dead-letter stream and the shared
//! consumer (created when missing), and a publish that returns only with JetStream's
//! confirmation. Must not know custody's answers or the upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::super::duplicates::{digest, SenderId};
use super::error::JetStreamError;
use crate::config::{DeadLetterLimits, JetStreamQueue};
use crate::wire::hl7::Header;

/// The durable consumer every guard of a route pulls from.
pub const CONSUMER: &str = "mllp-guard";
pub(super) const HEADER_ENQUEUED: &str = "Mllp-Enqueued-Ms";
pub(super) const HEADER_REASON: &str = "Mllp-Reason";

/// The subject of a route's pending messages.
pub fn queue_subject(stream: &str) -> String {
    format!("{stream}.queue")
}

/// The subject of a route's dead letters (taken by its dead-letter stream).
pub fn dead_subject(stream: &str) -> String {
    format!("{stream}.dead")
}

/// The name of the stream that keeps a route's dead letters, apart from its queue.
pub fn dead_stream_name(stream: &str) -> String {
    format!("{stream}_DEAD")
}

/// The stream limits a route's custody config sets: its queue's and its dead letters'.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `queue.max_messages` (the route's stream; its bytes are `jetstream.max_bytes`).
    pub max_messages: u64,
    /// `queue.dead_letters` (the dead-letter stream).
    pub dead: DeadLetterLimits,
}

/// The JetStream dedup id of a message: its sender (`tls:<identity>` or `ip:<address>`),
/// MSH-3, MSH-4 and MSH-10, each %-escaped (every byte outside printable ASCII, `%` and `|`),
/// and the first 16 bytes of its SHA-256 in hex, joined by `|`: a resend of the same message by
/// the same sender is one message to the stream, another sender's (or other content under the
/// same ids) never is.
pub fn message_id(header: &Header<'_>, sender: SenderId<'_>, payload: &[u8]) -> String {
    let mut id = String::with_capacity(128);
    let sender = sender.to_string();
    for (i, part) in [
        sender.as_bytes(),
        header.sending_application(),
        header.sending_facility(),
        header.control_id(),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            id.push('|');
        }
        for &b in part {
            if (0x21..=0x7e).contains(&b) && b != b'%' && b != b'|' {
                id.push(b as char);
            } else {
                id.push_str(&format!("%{b:02X}"));
            }
        }
    }
    id.push('|');
    for b in &digest(payload)[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Connects to NATS with the route's servers, TLS and credentials. With `background`, returns
/// at once and keeps trying in the background (a guard starting while NATS is down).
pub async fn connect(
    cfg: &JetStreamQueue,
    name: &str,
    background: bool,
) -> Result<async_nats::Client, JetStreamError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(cfg.publish_timeout))
        .max_reconnects(None);
    if let Some(creds) = &cfg.credentials {
        options = options.credentials_file(creds).await.map_err(|source| {
            JetStreamError::Credentials {
                path: creds.clone(),
                source,
            }
        })?;
    }
    if let Some(tls) = &cfg.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if background {
        options = options.retry_on_initial_connect();
    }
    options
        .connect(cfg.servers.as_slice())
        .await
        .map_err(|e| JetStreamError::Connect {
            servers: cfg.servers.join(", "),
            source: e.into(),
        })
}

/// The stream's settings as the config asks.
pub(super) fn stream_config(cfg: &JetStreamQueue, max_messages: u64) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![queue_subject(&cfg.stream)],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_bytes: i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX),
        max_messages: i64::try_from(max_messages).unwrap_or(i64::MAX),
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    }
}

/// Gets the route's stream, creating it with the configured settings when missing.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &JetStreamQueue,
    max_messages: u64,
) -> Result<stream::Stream, JetStreamError> {
    let stream = js
        .get_or_create_stream(stream_config(cfg, max_messages))
        .await
        .map_err(|e| JetStreamError::Stream {
            stream: cfg.stream.clone(),
            source: e.into(),
        })?;
    let replicas = stream.cached_info().config.num_replicas;
    if replicas != cfg.replicas {
        tracing::warn!(stream = %cfg.stream, configured = cfg.replicas, actual = replicas, "the JetStream stream exists with another replica count; it is used as it is");
    }
    Ok(stream)
}

/// The dead-letter stream's settings as the config asks: its own limits (`queue.dead_letters`),
/// refusing when full (discard new), kept until replayed or purged (limits retention).
pub(super) fn dead_stream_config(cfg: &JetStreamQueue, limits: DeadLetterLimits) -> stream::Config {
    stream::Config {
        name: dead_stream_name(&cfg.stream),
        subjects: vec![dead_subject(&cfg.stream)],
        retention: stream::RetentionPolicy::Limits,
        max_bytes: i64::try_from(limits.max_bytes).unwrap_or(i64::MAX),
        max_messages: i64::try_from(limits.max_messages).unwrap_or(i64::MAX),
        // Discard new, file storage, replicas and duplicate window: as the route's stream.
        ..stream_config(cfg, limits.max_messages)
    }
}

/// Gets the route's dead-letter stream, creating it when missing; limits that differ from the
/// config are updated, except that a limit is never lowered below what the stream holds (NATS
/// would delete the oldest dead letters to fit): that one stays, with a warning.
pub async fn ensure_dead_stream(
    js: &jetstream::Context,
    cfg: &JetStreamQueue,
    limits: DeadLetterLimits,
) -> Result<stream::Stream, JetStreamError> {
    let wanted = dead_stream_config(cfg, limits);
    let name = wanted.name.clone();
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| JetStreamError::Stream {
        stream: name.clone(),
        source: e,
    };
    let stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| failed(e.into()))?;
    let info = stream.cached_info();
    if info.config.subjects != wanted.subjects {
        return Err(failed(
            format!(
                "it exists with subjects {:?}, not [\"{}\"]: it is not this route's dead-letter stream; rename or remove it, or give the route another stream",
                info.config.subjects, wanted.subjects[0]
            )
            .into(),
        ));
    }
    let mut config = info.config.clone();
    let (held_messages, held_bytes) = (
        i64::try_from(info.state.messages).unwrap_or(i64::MAX),
        i64::try_from(info.state.bytes).unwrap_or(i64::MAX),
    );
    for (limit, want, held, what) in [
        (
            &mut config.max_messages,
            wanted.max_messages,
            held_messages,
            "max_messages",
        ),
        (
            &mut config.max_bytes,
            wanted.max_bytes,
            held_bytes,
            "max_bytes",
        ),
    ] {
        if *limit == want {
            continue;
        }
        if want < held {
            tracing::warn!(stream = %name, limit = what, configured = want, held, kept = *limit, "the dead-letter stream holds more than queue.dead_letters allows; its limit stays as it is until dead letters are replayed or purged (lowering it would delete the oldest)");
            continue;
        }
        *limit = want;
    }
    if (config.max_messages, config.max_bytes) == (info.config.max_messages, info.config.max_bytes)
    {
        return Ok(stream);
    }
    js.update_stream(&config)
        .await
        .map_err(|e| failed(e.into()))?;
    tracing::info!(stream = %name, max_messages = config.max_messages, max_bytes = config.max_bytes, "dead-letter stream limits updated from queue.dead_letters");
    js.get_stream(&name).await.map_err(|e| failed(e.into()))
}

/// Gets (or creates) the durable consumer all guards of the route share.
pub(super) async fn ensure_consumer(
    stream: &stream::Stream,
    cfg: &JetStreamQueue,
) -> Result<consumer::PullConsumer, JetStreamError> {
    let config = consumer::pull::Config {
        durable_name: Some(CONSUMER.to_string()),
        filter_subject: queue_subject(&cfg.stream),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: cfg.takeover,
        max_ack_pending: 1,
        max_deliver: -1,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(CONSUMER, config)
        .await
        .map_err(|e| JetStreamError::Consumer {
            consumer: CONSUMER,
            stream: cfg.stream.clone(),
            source: e.into(),
        })
}

/// Publishes and waits for the PubAck, under `limit`.
pub(super) async fn publish_confirmed(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    limit: Duration,
) -> Result<jetstream::publish::PublishAck, JetStreamError> {
    let confirmed = async {
        js.publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| JetStreamError::Publish(e.into()))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::StreamNotFound => JetStreamError::NoStream,
                _ if is_full(&e) => JetStreamError::Full(e.into()),
                _ => JetStreamError::NotConfirmed(e.into()),
            })
    };
    match tokio::time::timeout(limit, confirmed).await {
        Ok(result) => result,
        Err(_) => Err(JetStreamError::ConfirmTimeout(limit)),
    }
}

/// Whether JetStream refused a publish because the stream is at its `max_msgs` or `max_bytes`
/// (discard new): "maximum messages exceeded", "maximum bytes exceeded" (error code 10077).
fn is_full(err: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| {
            e.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED
                && e.to_string().contains("maximum")
        })
}

/// When a stored message was taken: its header, else the stream's own timestamp.
pub(super) fn enqueued_at(message: &jetstream::message::StreamMessage) -> u64 {
    message
        .headers
        .get(HEADER_ENQUEUED)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_else(|| (message.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
