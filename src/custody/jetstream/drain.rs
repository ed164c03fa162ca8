//! This guard's share of draining a route's stream: connect and make sure the streams and the
//! consumer exist (retrying), then pull one message at a time from the shared consumer, deliver
//! it while holding its lease (confirming progress), and ack, NAK with a backoff, or dead-letter
//! it (a message the dead letters cannot take stays first, NAKed with the backoff, and is not
//! sent again); meanwhile refresh the depth for metrics. Must not know senders or custody's
//! answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::error::JetStreamError;
use super::inspect::depth;
use super::layout::ensure_streams;
use super::nats::{Nats, Ready};
use super::stream::{
    connect, dead_subject, ensure_consumer, now_ms, publish_confirmed, HEADER_ENQUEUED,
    HEADER_REASON,
};
use crate::config::{OnReply, ReplyAction, Retry};
use crate::custody::counters::Counters;
use crate::custody::full::{dead_letters_full, dead_letters_have_room};
use crate::custody::give_up::{give_up, next_wait};
use crate::outcome::Fault as _;
use crate::queue::QueueStats;
use crate::timing::backoff::Backoff;
use crate::upstream::Upstream;
use crate::wire::codec::Frame;
use crate::wire::hl7::{printable, AckCode, AckView};

/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Idle heartbeat of a pull request: two missed ones end the subscription (it is reopened).
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the cached depth (for metrics) is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What the drainer needs from the route besides the queue.
pub struct DrainContext {
    pub upstream: Arc<Upstream>,
    pub retry: Retry,
    pub on_reply: OnReply,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    /// Paused by the operator: nothing is pulled (what this guard holds is not sent).
    pub paused: Arc<std::sync::atomic::AtomicBool>,
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
            let (stream, dead) = ensure_streams(&js, &nats.cfg, nats.limits).await?;
            nats.watch.started(&stream, &dead);
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
    tracing::info!(route = %route, stream = %nats.cfg.stream, dead_letter_stream = %super::stream::dead_stream_name(&nats.cfg.stream), replicas = nats.cfg.replicas, "JetStream custody ready");
    let stats = {
        let (nats, stop, js) = (nats.clone(), delivery.shutdown.clone(), js.clone());
        let counters = delivery.counters.clone();
        tokio::spawn(async move { refresh_stats(nats, js, counters, stop).await })
    };
    StreamDrainer {
        nats: &nats,
        consumer,
        js,
        delivery: &delivery,
        conn: None,
        last_failure: None,
        not_sent: None,
        dead_pending: None,
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

async fn refresh_stats(
    nats: Arc<Nats>,
    js: jetstream::Context,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = nats.watch.check_now.notified() => {}
        }
        let connected = nats.ready.get().is_some_and(|r| {
            r.client.connection_state() == async_nats::connection::State::Connected
        });
        nats.connected.store(connected, Ordering::Relaxed);
        if !connected {
            continue;
        }
        // A lost stream or consumer is noticed (and made again) before the depth is read.
        let _ = tokio::time::timeout(nats.cfg.publish_timeout * 2, nats.check_stream(&js)).await;
        let before = nats.watch.before_read();
        if let Ok(Ok(depth)) =
            tokio::time::timeout(nats.cfg.publish_timeout, depth(&js, &nats.cfg.stream)).await
        {
            nats.watch.read(before, &depth);
            nats.notice_room(&counters, &depth);
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

/// This guard's share of draining: pull, deliver while holding the lease, ack / NAK / dead-letter.
struct StreamDrainer<'a> {
    nats: &'a Nats,
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    delivery: &'a DrainContext,
    conn: crate::upstream::ConnSlot,
    /// What the last failed attempt at a stream sequence got (for a dead letter's reason).
    last_failure: Option<(u64, String)>,
    /// The stream sequence of the last message this guard failed to send at all (refused
    /// connection): offered again, it is not a redelivery to the receiver.
    not_sent: Option<u64>,
    /// A message this guard could not dead-letter (the dead letters full or unreachable), by
    /// stream sequence, and its reason: offered again, only its dead-lettering is retried.
    dead_pending: Option<(u64, String)>,
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
            if self.delivery.paused.load(Ordering::Relaxed) {
                // No pull open while paused: nothing is leased to this guard.
                pulls = None;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
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
        // The consumer or the stream may be gone: have it checked (and made again) now.
        self.nats.watch.check_now.notify_one();
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
        // Counted when an earlier attempt may have reached the receiver: not after this guard's
        // own attempt failed before sending (another guard's attempts cannot be told apart).
        if delivered > 1 && self.not_sent != Some(seq) {
            counters.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
        self.not_sent = None;
        let retry = self.delivery.retry;
        if let Some((_, reason)) = self.dead_pending.take_if(|(at, _)| *at == seq) {
            // Refused by the receiver already: not sent again, only its dead-lettering retried.
            self.dead_letter(&message, seq, delivered, &reason).await;
            return;
        }
        let age = || age_of(&message);
        let last = match &self.last_failure {
            Some((at, last)) if *at == seq => last.clone(),
            _ => String::new(),
        };
        // `delivered` counts this delivery: the failures so far are one fewer (a delivery whose
        // hold was lost counts too).
        if let Some(reason) = give_up(&retry, delivered - 1, age(), &last) {
            self.dead_letter(&message, seq, delivered, &reason).await;
            return;
        }
        let Some(frame) = Frame::from_payload(&message.payload) else {
            let reason = "stored payload is not a valid MLLP payload";
            self.dead_letter(&message, seq, delivered, reason).await;
            return;
        };
        let control_id = crate::wire::hl7::find_header(&message.payload)
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
                    self.nats.watch.delivered();
                    tracing::info!(route = %route, seq, control_id = %shown_id, ack = %reply.code, attempts = delivered, outcome = "delivered", "queued message delivered");
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
                self.dead_letter(&message, seq, delivered, &reason).await;
            }
            (_, result) => {
                let last = match result {
                    Ok(reply) => {
                        let text = AckView::parse(&reply.ack)
                            .map(|a| printable(a.text()))
                            .unwrap_or_default();
                        format!("upstream replied {}: {text}", reply.code)
                    }
                    Err(err) => format!("{}: {err}", err.reason()),
                };
                if let Some(reason) = give_up(&retry, delivered, age(), &last) {
                    self.last_failure = None;
                    self.dead_letter(&message, seq, delivered, &reason).await;
                    return;
                }
                self.last_failure = Some((seq, last));
                let wait = retry_wait(&retry, delivered, age());
                match result {
                    Ok(reply) => {
                        tracing::warn!(route = %route, seq, control_id = %shown_id, ack = %reply.code, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "upstream refused a queued message; retrying")
                    }
                    Err(err) if err.may_have_reached_the_receiver() => {
                        tracing::warn!(route = %route, seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed after it was sent; retrying (the upstream may see it twice)")
                    }
                    Err(err) => {
                        self.not_sent = Some(seq);
                        tracing::warn!(route = %route, seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed before it was sent; retrying")
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

    /// Publishes the message to the dead letters (their own stream, confirmed), then acks it
    /// off the queue. When they cannot take it (full, or not reachable), it stays first: NAKed
    /// with the retry backoff, remembered so that it is not sent to the receiver again.
    async fn dead_letter(
        &mut self,
        message: &jetstream::Message,
        seq: u64,
        delivered: u32,
        reason: &str,
    ) {
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
        let counters = &self.delivery.counters;
        let control_id = crate::wire::hl7::find_header(&message.payload)
            .map(|h| printable(h.control_id()))
            .unwrap_or_default();
        match stored {
            Ok(_) => {
                dead_letters_have_room(route, counters);
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route = %route, seq, control_id = %control_id, reason, attempts = delivered, outcome = "dead_lettered", "queued message moved to the dead letters");
                crate::ops::notify::dead_letter(route, seq, &control_id, &reason);
                self.nats.watch.dead_lettered();
                if let Err(err) = self.settle(message, AckKind::Ack).await {
                    tracing::warn!(route = %route, seq, error = %err, "dead-lettered, but JetStream did not confirm the ack; it will be handled again");
                }
            }
            Err(err) => {
                if let JetStreamError::Full(_) = err {
                    dead_letters_full(route, counters, seq, &control_id, &err);
                    self.nats.found_full(&self.js).await;
                } else {
                    tracing::error!(route = %route, seq, control_id = %control_id, error = %err, "cannot store a dead letter; the message stays first and is not sent again");
                }
                self.dead_pending = Some((seq, reason));
                let wait = retry_wait(&self.delivery.retry, delivered, age_of(message));
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            }
        }
    }
}

/// How long a message waits before its next try after `delivered` deliveries: the retry
/// backoff (`retry.initial` doubling to `retry.max`, jittered), never past `retry.max_age`.
fn retry_wait(retry: &Retry, delivered: u32, age: Duration) -> Duration {
    let mut backoff = Backoff::new(retry.initial, retry.max);
    for _ in 1..delivered.min(64) {
        backoff.next_wait();
    }
    next_wait(retry, backoff.next_wait(), age)
}

/// How long ago a pulled message was first queued.
fn age_of(message: &jetstream::Message) -> Duration {
    let enqueued_ms = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_ENQUEUED))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or_else(now_ms);
    Duration::from_millis(now_ms().saturating_sub(enqueued_ms))
}
