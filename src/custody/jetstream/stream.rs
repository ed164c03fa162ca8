//! The route's layout in NATS and the calls that make and use it: subjects, message ids and
//! headers, connecting, the stream and the shared consumer (created when missing), and a publish
//! that returns only with JetStream's confirmation. Must not know custody's answers or the
//! upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::super::duplicates::{digest, SenderId};
use super::error::JetStreamError;
use crate::config::JetStreamQueue;
use crate::wire::hl7::Header;

/// The durable consumer every guard of a route pulls from.
pub const CONSUMER: &str = "mllp-guard";
pub(super) const HEADER_ENQUEUED: &str = "Mllp-Enqueued-Ms";
pub(super) const HEADER_REASON: &str = "Mllp-Reason";

/// The subject of a route's pending messages.
pub fn queue_subject(stream: &str) -> String {
    format!("{stream}.queue")
}

/// The subject of a route's dead letters.
pub fn dead_subject(stream: &str) -> String {
    format!("{stream}.dead")
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
        subjects: vec![queue_subject(&cfg.stream), dead_subject(&cfg.stream)],
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
                _ => JetStreamError::NotConfirmed(e.into()),
            })
    };
    match tokio::time::timeout(limit, confirmed).await {
        Ok(result) => result,
        Err(_) => Err(JetStreamError::ConfirmTimeout(limit)),
    }
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
