//! Custody on NATS JetStream (`queue.backend: jetstream`): a replicated store that several guards
//! serving one route share, so losing a machine loses no acked message.
//!
//! Owns the mapping of custody's operations onto JetStream; must not know senders, sockets,
//! ack bytes or the upstream's protocol (custody answers senders, [`crate::upstream`] delivers).
//!
//! # Layout in NATS (one stream per route)
//!
//! ```text
//! stream <S>          subjects <S>.queue (pending messages) and <S>.dead (dead letters);
//!                     retention work-queue (a message is removed once its consumer acks it),
//!                     discard new (full = publishes refused, never a drop), file storage,
//!                     replicas, max_bytes, max_msgs, duplicate_window from the config
//! consumer mllp-guard durable pull consumer on <S>.queue: explicit ack, max_ack_pending 1,
//!                     ack_wait = `takeover`, unlimited redeliveries
//! headers             Nats-Msg-Id (dedup: MSH-3|MSH-4|MSH-10, %-escaped), Mllp-Enqueued-Ms,
//!                     Mllp-Reason (dead letters only)
//! ```
//!
//! # The guarantees and how they hold
//!
//! - **Never ack what is not stored**: [`Nats::publish`] returns `Ok` only with a PubAck, which
//!   the stream leader sends after the message is committed by a quorum of its replicas. No
//!   connection, an error or no PubAck within `publish_timeout` is an `Err` (a negative ack).
//! - **In order, one in flight, exactly one drainer**: every guard pulls from the same durable
//!   consumer, whose `max_ack_pending: 1` lets the server hand out the next message only after
//!   the previous one is acked; a redelivery comes before anything newer. Whichever guard holds
//!   the message is the route's drainer at that moment.
//! - **Takeover**: the holder confirms progress (`+WPI`, waited for) every `takeover / 4` while
//!   it delivers. A guard that dies stops confirming; after `takeover` the server redelivers the
//!   message to another guard, which resumes from it (the first unacknowledged message). A
//!   holder that cannot confirm progress abandons its delivery attempt before `takeover` has
//!   passed since its last confirmation, so two guards never deliver at once.
//! - **Retries**: a failed attempt is NAKed with the backoff as delay (the message stays the
//!   one in flight); AE/AR follow `on_reply`; a dead letter is published (PubAck) to `<S>.dead`
//!   before the message is acked off the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::{JetStreamQueue, OnReply, ReplyAction, Retry};
use crate::custody::counters::Counters;
use crate::outcome::{Fault, Side};
use crate::queue::{QueueStats, Record};
use crate::timing::backoff::Backoff;
use crate::upstream::Upstream;
use crate::wire::codec::Frame;
use crate::wire::hl7::{printable, AckCode, AckView, Header};

/// The durable consumer every guard of a route pulls from.
pub const CONSUMER: &str = "mllp-guard";
const HEADER_ENQUEUED: &str = "Mllp-Enqueued-Ms";
const HEADER_REASON: &str = "Mllp-Reason";
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Idle heartbeat of a pull request: two missed ones end the subscription (it is reopened).
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the cached depth (for metrics) is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What a JetStream operation can fail with. The texts are the ones logs and negative acks
/// carry (PHI-free); the causes are the NATS client's own errors.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("reading NATS credentials {}: {source}", .path.display())]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS ({servers}): {source}")]
    Connect { servers: String, source: Cause },
    #[error("stream {stream}: {source}")]
    Stream { stream: String, source: Cause },
    #[error("consumer {CONSUMER} on stream {stream}: {source}")]
    Consumer { stream: String, source: Cause },
    #[error("not connected to NATS JetStream yet")]
    NotReady,
    #[error("the connection to NATS is down")]
    Down,
    #[error("JetStream publish failed: {0}")]
    Publish(Cause),
    #[error("JetStream did not confirm the publish: {0}")]
    NotConfirmed(Cause),
    #[error("JetStream did not confirm the publish within {}", humantime::format_duration(*.0))]
    ConfirmTimeout(Duration),
    #[error("{0}")]
    StreamInfo(Cause),
    #[error("reading stream {stream}: {source}")]
    Read { stream: String, source: Cause },
    #[error("deleting dead letter {seq}: {source}")]
    DeleteDeadLetter { seq: u64, source: Cause },
    #[error("purging {subject}: {source}")]
    Purge { subject: String, source: Cause },
    #[error("{0}")]
    Settle(Cause),
    #[error("timed out")]
    SettleTimeout,
}

/// The NATS client's error behind a [`JetStreamError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Fault for JetStreamError {
    fn side(&self) -> Side {
        Side::Queue
    }

    fn reason(&self) -> &'static str {
        match self {
            JetStreamError::Credentials { .. } => "nats_credentials",
            JetStreamError::Connect { .. } => "nats_connect",
            JetStreamError::Stream { .. } => "stream",
            JetStreamError::Consumer { .. } => "consumer",
            JetStreamError::NotReady => "not_ready",
            JetStreamError::Down => "nats_down",
            JetStreamError::Publish(_) => "publish",
            JetStreamError::NotConfirmed(_) => "publish_not_confirmed",
            JetStreamError::ConfirmTimeout(_) => "publish_timeout",
            JetStreamError::StreamInfo(_) => "stream_info",
            JetStreamError::Read { .. } => "read",
            JetStreamError::DeleteDeadLetter { .. } => "delete",
            JetStreamError::Purge { .. } => "purge",
            JetStreamError::Settle(_) => "settle",
            JetStreamError::SettleTimeout => "settle_timeout",
        }
    }

    /// Everything but an unreadable credentials file: NATS may be back, the stream elected.
    fn retry_helps(&self) -> bool {
        !matches!(self, JetStreamError::Credentials { .. })
    }

    /// AE: the message may be fine; the guard could not store it now.
    fn ack(&self) -> AckCode {
        AckCode::AE
    }
}

/// The subject of a route's pending messages.
pub fn queue_subject(stream: &str) -> String {
    format!("{stream}.queue")
}

/// The subject of a route's dead letters.
pub fn dead_subject(stream: &str) -> String {
    format!("{stream}.dead")
}

/// The JetStream dedup id of a message: MSH-3, MSH-4 and MSH-10, each %-escaped (every byte
/// outside printable ASCII, `%` and `|`), joined by `|`.
pub fn message_id(header: &Header<'_>) -> String {
    let mut id = String::with_capacity(64);
    for (i, part) in [
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
fn stream_config(cfg: &JetStreamQueue, max_messages: u64) -> stream::Config {
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
async fn ensure_consumer(
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
            stream: cfg.stream.clone(),
            source: e.into(),
        })
}

struct Ready {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// A route's JetStream custody in a running guard: publishes for custody's `accept`, and (in
/// [`run`]) the connection, the stream, the shared consumer and this guard's drainer.
pub struct Nats {
    route: Arc<str>,
    cfg: JetStreamQueue,
    max_messages: u64,
    ready: OnceLock<Ready>,
    /// Woken when `ready` is set.
    became_ready: tokio::sync::Notify,
    /// Depth and dead letters as last read (for metrics); refreshed every few seconds.
    stats: Mutex<(QueueStats, u64)>,
    connected: AtomicBool,
}

impl Nats {
    pub fn new(route: Arc<str>, cfg: JetStreamQueue, max_messages: u64) -> Arc<Nats> {
        Arc::new(Nats {
            route,
            cfg,
            max_messages,
            ready: OnceLock::new(),
            became_ready: tokio::sync::Notify::new(),
            stats: Mutex::new((QueueStats::default(), 0)),
            connected: AtomicBool::new(false),
        })
    }

    /// Stores one message: `Ok(duplicate)` once JetStream confirmed it (`duplicate`: the stream
    /// already had this message id within its window), `Err(reason)` when it is not stored.
    pub async fn publish(
        &self,
        payload: Bytes,
        message_id: &str,
        enqueued_at_ms: u64,
    ) -> Result<bool, JetStreamError> {
        let ready = match self.ready.get() {
            Some(ready) => ready,
            // Starting up: wait (bounded) for the connection and the stream.
            None => {
                let woken = self.became_ready.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match self.ready.get() {
                    Some(ready) => ready,
                    None => {
                        let _ = tokio::time::timeout(self.cfg.publish_timeout, woken).await;
                        self.ready.get().ok_or(JetStreamError::NotReady)?
                    }
                }
            }
        };
        if ready.client.connection_state() != async_nats::connection::State::Connected {
            return Err(JetStreamError::Down);
        }
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        headers.insert(HEADER_ENQUEUED, enqueued_at_ms.to_string().as_str());
        publish_confirmed(
            &ready.js,
            queue_subject(&self.cfg.stream),
            headers,
            payload,
            self.cfg.publish_timeout,
        )
        .await
        .map(|ack| ack.duplicate)
    }

    /// The last depth read, and dead letters.
    pub fn stats(&self) -> (QueueStats, u64) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether publishes can currently succeed (connected to NATS).
    pub fn writable(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Publishes and waits for the PubAck, under `limit`.
async fn publish_confirmed(
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
            .map_err(|e| JetStreamError::NotConfirmed(e.into()))
    };
    match tokio::time::timeout(limit, confirmed).await {
        Ok(result) => result,
        Err(_) => Err(JetStreamError::ConfirmTimeout(limit)),
    }
}

/// What the drainer needs from the route besides the queue.
pub struct DrainContext {
    pub upstream: Arc<Upstream>,
    pub retry: Retry,
    pub on_reply: OnReply,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
}

/// Connects (retrying until shutdown), makes sure the stream and the consumer exist, then drains
/// the route as one of its guards until shutdown.
pub async fn run(nats: Arc<Nats>, delivery: DrainContext) {
    let route = nats.route.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let client = match connect(&nats.cfg, &format!("mllp-guard {route}"), true).await {
        Ok(client) => client,
        Err(err) => {
            // Only a bad credentials file gets here; the config check makes that rare.
            tracing::error!(route = %route, error = %err, "JetStream custody cannot start; every message will get a negative ack");
            return;
        }
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(nats.cfg.publish_timeout);
    let consumer = loop {
        let attempt = async {
            let stream = ensure_stream(&js, &nats.cfg, nats.max_messages).await?;
            ensure_consumer(&stream, &nats.cfg).await
        };
        match attempt.await {
            Ok(consumer) => break consumer,
            Err(err) => {
                let wait = backoff.next_wait();
                tracing::warn!(route = %route, error = %err, retry_in_ms = wait.as_millis() as u64, "JetStream stream not ready; retrying");
                tokio::select! {
                    _ = delivery.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    let _ = nats.ready.set(Ready {
        client: client.clone(),
        js: js.clone(),
    });
    nats.connected.store(true, Ordering::Relaxed);
    nats.became_ready.notify_waiters();
    tracing::info!(route = %route, stream = %nats.cfg.stream, replicas = nats.cfg.replicas, "JetStream custody ready");
    let stats = {
        let (nats, stop, js) = (nats.clone(), delivery.shutdown.clone(), js.clone());
        tokio::spawn(async move { refresh_stats(nats, js, stop).await })
    };
    StreamDrainer {
        nats: &nats,
        consumer,
        js,
        delivery: &delivery,
        conn: None,
    }
    .run()
    .await;
    stats.abort();
    let c = &delivery.counters;
    tracing::info!(
        route = %route,
        queued = c.queued.load(Ordering::Relaxed),
        delivered = c.delivered.load(Ordering::Relaxed),
        redeliveries = c.redeliveries.load(Ordering::Relaxed),
        dead_lettered = c.dead_lettered.load(Ordering::Relaxed),
        duplicates_answered = c.duplicates_answered.load(Ordering::Relaxed),
        "JetStream custody stopped"
    );
}

async fn refresh_stats(nats: Arc<Nats>, js: jetstream::Context, stop: CancellationToken) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let connected = nats.ready.get().is_some_and(|r| {
            r.client.connection_state() == async_nats::connection::State::Connected
        });
        nats.connected.store(connected, Ordering::Relaxed);
        if let Ok(Ok(depth)) =
            tokio::time::timeout(nats.cfg.publish_timeout, depth(&js, &nats.cfg.stream)).await
        {
            *nats.stats.lock().unwrap_or_else(|e| e.into_inner()) = (
                QueueStats {
                    messages: depth.pending,
                    bytes: depth.bytes,
                    oldest_enqueued_ms: depth.oldest_enqueued_ms,
                    next_seq: depth.last_seq + 1,
                },
                depth.dead,
            );
        }
    }
}

/// A route's stream as operators see it.
#[derive(Clone, Debug, Default)]
pub struct Depth {
    pub pending: u64,
    pub dead: u64,
    /// The whole stream (pending and dead letters).
    pub bytes: u64,
    pub oldest_enqueued_ms: Option<u64>,
    pub last_seq: u64,
}

/// Reads the depth of a route's stream (messages per subject, the oldest pending one's age).
pub async fn depth(js: &jetstream::Context, stream_name: &str) -> Result<Depth, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let (queue, dead) = (queue_subject(stream_name), dead_subject(stream_name));
    let mut out = Depth::default();
    let mut subjects = stream
        .info_with_subjects(format!("{stream_name}.*"))
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| stream_error(stream_name, e))?;
        if subject == queue {
            out.pending = count as u64;
        } else if subject == dead {
            out.dead = count as u64;
        }
    }
    let info = stream
        .get_info()
        .await
        .map_err(|e| JetStreamError::StreamInfo(e.into()))?;
    out.bytes = info.state.bytes;
    out.last_seq = info.state.last_sequence;
    if out.pending > 0 {
        if let Ok(first) = stream.get_first_raw_message_by_subject(&queue, 1).await {
            out.oldest_enqueued_ms = Some(enqueued_at(&first));
        }
    }
    Ok(out)
}

/// When a stored message was taken: its header, else the stream's own timestamp.
fn enqueued_at(message: &jetstream::message::StreamMessage) -> u64 {
    message
        .headers
        .get(HEADER_ENQUEUED)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_else(|| (message.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

/// Up to `limit` messages of one subject (`queue` or `dead`) in stream order, as records (the
/// seq is the stream sequence; the note a dead letter's reason).
pub async fn records(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    limit: usize,
) -> Result<Vec<Record>, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let mut out = Vec::new();
    let mut seq = 1u64;
    while out.len() < limit {
        let found = stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject.to_string())
            .send()
            .await;
        let message = match found {
            Ok(message) => message,
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
            Err(err) => {
                return Err(JetStreamError::Read {
                    stream: stream_name.to_string(),
                    source: err.into(),
                })
            }
        };
        seq = message.sequence + 1;
        out.push(Record {
            seq: message.sequence,
            enqueued_at_ms: enqueued_at(&message),
            note: message
                .headers
                .get(HEADER_REASON)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            payload: message.payload,
        });
    }
    Ok(out)
}

/// Moves every dead letter back to the end of the queue, in order: each is published (PubAck)
/// before it is deleted from the dead letters, so a crash replays twice, never loses one.
/// Works while guards run. Returns how many were replayed.
pub async fn replay(
    js: &jetstream::Context,
    stream_name: &str,
    limit: Duration,
) -> Result<u64, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let letters = records(js, stream_name, &dead_subject(stream_name), usize::MAX).await?;
    let mut replayed = 0;
    for letter in letters {
        let mut headers = HeaderMap::new();
        // No message id: a replay must not be dropped as a duplicate of the original.
        headers.insert(HEADER_ENQUEUED, letter.enqueued_at_ms.to_string().as_str());
        publish_confirmed(
            js,
            queue_subject(stream_name),
            headers,
            letter.payload,
            limit,
        )
        .await?;
        stream
            .delete_message(letter.seq)
            .await
            .map_err(|e| JetStreamError::DeleteDeadLetter {
                seq: letter.seq,
                source: e.into(),
            })?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Removes every message of one subject; returns how many.
pub async fn purge(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
) -> Result<u64, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    stream
        .purge()
        .filter(subject)
        .await
        .map(|r| r.purged)
        .map_err(|e| JetStreamError::Purge {
            subject: subject.to_string(),
            source: e.into(),
        })
}

/// A failure to reach or read a route's stream.
fn stream_error(
    stream: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> JetStreamError {
    JetStreamError::Stream {
        stream: stream.to_string(),
        source: Box::new(err),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This guard's share of draining: pull, deliver while holding the lease, ack / NAK / dead-letter.
struct StreamDrainer<'a> {
    nats: &'a Nats,
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    delivery: &'a DrainContext,
    conn: Option<crate::upstream::UpstreamConn>,
}

/// How an attempt under the lease ended.
enum Attempt {
    Done(Result<crate::upstream::VerifiedAck, crate::upstream::UpstreamError>),
    /// Progress could not be confirmed in time: another guard may take over; let go.
    LeaseLost,
}

impl StreamDrainer<'_> {
    async fn run(mut self) {
        let route = self.nats.route.clone();
        let shutdown = self.delivery.shutdown.clone();
        let mut pull_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        // One long-lived pull subscription (a pull request of one message at a time, renewed
        // by the client), recreated after an error such as missed heartbeats.
        let mut pulls: Option<consumer::pull::Stream> = None;
        while !shutdown.is_cancelled() {
            let stream = match &mut pulls {
                Some(stream) => stream,
                None => {
                    let opened = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(1)
                        .expires(PULL_EXPIRES)
                        .heartbeat(PULL_HEARTBEAT)
                        .messages();
                    let opened = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        opened = tokio::time::timeout(PULL_EXPIRES, opened) => opened,
                    };
                    match opened {
                        Ok(Ok(stream)) => pulls.insert(stream),
                        Ok(Err(err)) => {
                            self.pull_failed(
                                &route,
                                &err.to_string(),
                                &mut pull_backoff,
                                &shutdown,
                            )
                            .await;
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
            };
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => break,
                pulled = stream.next() => pulled,
            };
            let message = match pulled {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    pulls = None;
                    self.pull_failed(&route, &err.to_string(), &mut pull_backoff, &shutdown)
                        .await;
                    continue;
                }
                None => {
                    pulls = None;
                    continue;
                }
            };
            pull_backoff.reset();
            // The server started the hold at delivery, just before this.
            self.handle(message, Instant::now()).await;
        }
    }

    async fn pull_failed(
        &self,
        route: &str,
        err: &str,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) {
        let wait = backoff.next_wait();
        tracing::debug!(route, error = %err, retry_in_ms = wait.as_millis() as u64, "pulling from JetStream failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Delivers one pulled message (the route's front) and settles it.
    async fn handle(&mut self, message: jetstream::Message, asked_at: Instant) {
        let route = self.nats.route.clone();
        let counters = &self.delivery.counters;
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => (0, 1),
        };
        if delivered > 1 {
            counters.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
        let Some(frame) = Frame::from_payload(&message.payload) else {
            self.dead_letter(&message, seq, "stored payload is not a valid MLLP payload")
                .await;
            return;
        };
        let control_id = Header::parse(&message.payload)
            .map(|h| h.control_id().to_vec())
            .unwrap_or_default();
        let shown_id = printable(&control_id);
        let attempt = self
            .deliver_under_lease(&message, &frame, &control_id, asked_at)
            .await;
        let result = match attempt {
            Attempt::Done(result) => result,
            Attempt::LeaseLost => {
                // The attempt was dropped mid-exchange: never reuse that connection.
                self.conn = None;
                tracing::warn!(route = %route, seq, control_id = %shown_id, outcome = "lease_lost", "could not confirm the hold on the route's front message in time; another guard takes over");
                return;
            }
        };
        let on_reply = self.delivery.on_reply;
        let action = match &result {
            Ok(reply) if reply.code.is_positive() => ReplyAction::Accept,
            Ok(reply) if matches!(reply.code, AckCode::AE | AckCode::CE) => on_reply.ae,
            Ok(_) => on_reply.ar,
            Err(_) => ReplyAction::Retry,
        };
        match (action, &result) {
            (ReplyAction::Accept, Ok(reply)) => match self.settle(&message, AckKind::Ack).await {
                Ok(()) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(route = %route, seq, control_id = %shown_id, ack = %reply.code, attempts = delivered, outcome = "delivered", "queued message delivered");
                }
                Err(err) => {
                    tracing::warn!(route = %route, seq, control_id = %shown_id, error = %err, "delivered, but JetStream did not confirm the ack; it will be delivered again (a duplicate)");
                }
            },
            (ReplyAction::DeadLetter, Ok(reply)) => {
                let text = AckView::parse(&reply.ack)
                    .map(|a| printable(a.text()))
                    .unwrap_or_default();
                let reason = format!("upstream replied {}: {}", reply.code, text);
                tracing::warn!(route = %route, seq, control_id = %shown_id, ack = %reply.code, outcome = "dead_lettered", "queued message moved to the dead letters");
                self.dead_letter(&message, seq, &reason).await;
            }
            (_, result) => {
                let mut backoff =
                    Backoff::new(self.delivery.retry.initial, self.delivery.retry.max);
                for _ in 1..delivered.min(64) {
                    backoff.next_wait();
                }
                let wait = backoff.next_wait();
                match result {
                    Ok(reply) => {
                        tracing::warn!(route = %route, seq, control_id = %shown_id, ack = %reply.code, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "upstream refused a queued message; retrying")
                    }
                    Err(err) => {
                        tracing::warn!(route = %route, seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed; retrying (the upstream may see it twice)")
                    }
                }
                // The message stays the one in flight; the server offers it again after `wait`
                // (to this guard or another one).
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            }
        }
    }

    /// One delivery attempt while confirming the hold on the message; gives up (dropping the
    /// attempt and its upstream connection) if the hold cannot be confirmed before it may
    /// have expired.
    async fn deliver_under_lease(
        &mut self,
        message: &jetstream::Message,
        frame: &Frame,
        control_id: &[u8],
        asked_at: Instant,
    ) -> Attempt {
        let takeover = self.nats.cfg.takeover;
        // Keep a margin so an abandoned attempt ends before the server's ack wait does.
        let margin = takeover / 5;
        let mut held_until = asked_at + takeover - margin;
        // Not `interval`: awaiting its immediate first tick goes through the timer wheel and
        // cost about a millisecond per message.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + takeover / 4, takeover / 4);
        let upstream = self.delivery.upstream.clone();
        let exchange = upstream.exchange(&mut self.conn, frame, control_id, Default::default());
        tokio::pin!(exchange);
        let mut confirming = None;
        loop {
            let idle = confirming.is_none();
            let confirm_step = async {
                match &mut confirming {
                    Some(fut) => fut.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut exchange => return Attempt::Done(result),
                _ = tokio::time::sleep_until(held_until.into()) => {
                    return Attempt::LeaseLost;
                }
                _ = tick.tick(), if idle => {
                    let sent_at = Instant::now();
                    confirming = Some(Box::pin(async move {
                        let ok = message.double_ack_with(AckKind::Progress).await.is_ok();
                        (sent_at, ok)
                    }));
                }
                (sent_at, ok) = confirm_step => {
                    confirming = None;
                    if ok {
                        held_until = sent_at + takeover - margin;
                    }
                }
            }
        }
    }

    /// Acks (or otherwise settles) a message and waits for the server's confirmation.
    async fn settle(
        &self,
        message: &jetstream::Message,
        kind: AckKind,
    ) -> Result<(), JetStreamError> {
        match tokio::time::timeout(self.nats.cfg.publish_timeout, message.double_ack_with(kind))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JetStreamError::Settle(e)),
            Err(_) => Err(JetStreamError::SettleTimeout),
        }
    }

    /// Publishes the message to the dead letters (confirmed), then acks it off the queue.
    async fn dead_letter(&mut self, message: &jetstream::Message, seq: u64, reason: &str) {
        let route = &self.nats.route;
        let mut headers = HeaderMap::new();
        let enqueued = message
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_ENQUEUED))
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| now_ms().to_string());
        headers.insert(HEADER_ENQUEUED, enqueued.as_str());
        // Header values are one line of printable text.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(512)
            .collect();
        headers.insert(HEADER_REASON, reason.as_str());
        let stored = publish_confirmed(
            &self.js,
            dead_subject(&self.nats.cfg.stream),
            headers,
            message.payload.clone(),
            self.nats.cfg.publish_timeout,
        )
        .await;
        match stored {
            Ok(_) => {
                self.delivery
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(err) = self.settle(message, AckKind::Ack).await {
                    tracing::warn!(route = %route, seq, error = %err, "dead-lettered, but JetStream did not confirm the ack; it will be handled again");
                }
            }
            Err(err) => {
                tracing::error!(route = %route, seq, error = %err, "cannot store a dead letter; the message stays queued");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_escape_separators_and_non_printable_bytes() {
        let h = Header::parse(b"MSH|^~\\&|LAB%|F\xe9 X|R|F|2024||ADT^A01|C1|P|2.5\r").unwrap();
        assert_eq!(message_id(&h), "LAB%25|F%E9%20X|C1");
        let a = Header::parse(b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        let b = Header::parse(b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        assert_ne!(message_id(&a), message_id(&b));
    }

    #[test]
    fn the_stream_refuses_when_full_and_removes_what_is_acked() {
        let cfg = JetStreamQueue {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "MLLP_LAB".into(),
            replicas: 3,
            max_bytes: 10 << 30,
            duplicate_window: Duration::from_secs(600),
            tls: None,
            credentials: None,
            takeover: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
        };
        let s = stream_config(&cfg, 1000);
        assert_eq!(s.discard, stream::DiscardPolicy::New);
        assert_eq!(s.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(s.subjects, vec!["MLLP_LAB.queue", "MLLP_LAB.dead"]);
        assert_eq!(
            (s.num_replicas, s.max_bytes, s.max_messages),
            (3, 10 << 30, 1000)
        );
    }
}
