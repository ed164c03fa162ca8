//! One downstream connection, end to end: read a frame, read its header, check its source's
//! rate and the route's rules, dispatch it, write the answer; one message in flight at a time
//! in each direction.
//!
//! Owns the per-connection timeouts (a started frame must finish within `receive_timeout`; a
//! quiet sender is closed after `idle_timeout`), the answers to frames that cannot be delivered
//! (oversize, no readable header, rate limited, rejected by a rule), the per-message audit line,
//! the framing of what it writes, MLLP release 2 commit blocks towards the sender, and stopping
//! between messages on shutdown. On a paired forward route it also carries the other direction
//! (see [`crate::inbound::two_way`]), watching the receiver through the [`Lanes`] dispatch
//! gives it. Must not know how upstreams connect, which connection carries a message, or how
//! delivery works: it asks [`crate::dispatch`] and writes the [`Answer`] it gets.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::{MllpRelease, OnLimit};
use crate::dispatch::{Dispatch, Lanes};
use crate::firewall::rules::{self, Decision, Facts};
use crate::inbound::commits;
use crate::inbound::messages::{self, read_header, Acking};
use crate::inbound::readmit;
use crate::inbound::two_way::{Forwarded, Forwarding, FromSender, Happened, SenderLost, TwoWay};
use crate::net::Stream;
use crate::ops::audit;
use crate::ops::connections::{Entry, State};
use crate::outcome::{Answer, Failure, Side};
use crate::route::{Peer, RouteContext};
use crate::timing::deadline_timer::DeadlineTimer;
use crate::timing::woken::Woken;
use crate::wire::ack::{ErrorCode, Says};
use crate::wire::codec::{Decoded, Frame, Framing};
use crate::wire::commit;
use crate::wire::hl7::{self, AckCode, Header, HeaderKind, Printable};
use crate::wire::link::{Link, MAX_SET_ASIDE};

/// Why a session ended (for the close log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    PeerClosed,
    ReceiveTimeout,
    IdleTimeout,
    ReadError,
    WriteError,
    DeliveryFailure,
    Shutdown,
    TlsOnPlaintext,
    Flooded,
    SendTimeout,
    /// The operator closed it (`DELETE /api/v1/connections/{id}`) after its message in flight.
    Operator,
    /// A reload's config no longer admits this connection.
    NotAdmitted,
}

impl End {
    /// The metric label (`mllp_guard_connections_closed_total{reason}`).
    fn label(self) -> &'static str {
        match self {
            End::PeerClosed => "peer_closed",
            End::ReceiveTimeout => "receive_timeout",
            End::IdleTimeout => "idle_timeout",
            End::ReadError => "read_error",
            End::WriteError => "write_error",
            End::DeliveryFailure => "delivery_failure",
            End::Shutdown => "shutdown",
            End::TlsOnPlaintext => "tls_on_plaintext",
            End::Flooded => "flooded",
            End::SendTimeout => "send_timeout",
            End::Operator => "operator",
            End::NotAdmitted => "not_admitted_after_reload",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            End::PeerClosed => "peer closed",
            End::ReceiveTimeout => "receive_timeout: a started frame did not finish in time",
            End::IdleTimeout => "idle_timeout",
            End::ReadError => "read error",
            End::WriteError => "write error",
            End::DeliveryFailure => "message not delivered (on_upstream_failure: close)",
            End::Shutdown => "shutting down",
            End::TlsOnPlaintext => "TLS on a plaintext listener",
            End::Flooded => "too many frames sent without waiting for answers",
            End::SendTimeout => "send_timeout: the sender did not read its acks",
            End::Operator => "closed by the operator",
            End::NotAdmitted => "no longer admitted by the reloaded config",
        }
    }
}

/// What woke a session up.
enum Event {
    Shutdown,
    /// A read from the sender: `None` when its deadline passed.
    Sender(Option<std::io::Result<usize>>),
    /// A read from the paired upstream connection.
    Receiver(std::io::Result<usize>),
    /// The paired upstream connection has been quiet for `idle_reconnect`.
    IdleUpstream,
    /// A reload replaced the route's context.
    Reloaded,
    /// Something happened in one of the two directions of a two-way connection.
    TwoWay(Happened),
}

/// How a session ends when the sender's connection failed during the other direction's work.
fn lost_end(lost: SenderLost) -> End {
    match lost {
        SenderLost::Closed => End::PeerClosed,
        SenderLost::Io => End::WriteError,
        SenderLost::Flooded => End::Flooded,
    }
}

/// The delivery of a sender's message on a two-way connection, to run beside the other
/// direction: it holds the session's `lanes` (a placeholder stays behind) and gives them back.
fn forwarding<'a>(
    ctx: &Arc<RouteContext>,
    mut lanes: Box<Lanes>,
    frame: Frame,
    who: &'a Peer,
) -> Forwarding<'a> {
    let ctx = ctx.clone();
    Box::pin(async move {
        let answer = handle_message(&ctx, &mut lanes, &frame, who).await;
        Forwarded {
            answer,
            lanes,
            frame,
        }
    })
}

/// After a reload (with nothing in flight either way): lanes replaced for a new upstream get
/// a new two-way state, and lanes no longer two-way (the route is pooled now) have none.
fn rewire(two_way: &mut Option<Box<TwoWay<'_>>>, lanes: &mut Lanes) {
    if let Some(rewired) = TwoWay::new(lanes) {
        *two_way = Some(rewired);
    } else if !lanes.two_way() {
        *two_way = None;
    }
}

/// The console's view before the answer to one of the sender's messages is written: the
/// receiver has answered, so no longer awaiting its ack, and the answer's bytes count as sent.
/// A console reading right after the sender got its ack sees the connection idle with those
/// bytes: the session, on its own worker thread, may not have run again since its write
/// returned. (If the write fails, the connection and its entry end with it.)
fn answering(answer: &Answer, listed: &Entry) {
    listed.set_state(State::Idle);
    let bytes = match answer {
        Answer::Ack { ack, .. } => ack.len() + 3,
        _ => 0,
    };
    listed.answered(bytes);
}

/// Serves one admitted (and, for TLS routes, handshaken) sender until it leaves, stalls, or the
/// guard shuts down (`shutdown` also stops it between messages when the operator closes it).
/// `listed` is its console entry, whose counters it keeps (no lock). Returns how many messages
/// it carried (both directions). A reload reaches it between messages: it is checked against
/// the new config and either closed (after its in-flight message) or served under the new
/// rules, limits and upstream from its next message.
// Written out, not `async fn`: see the comment on the block (it is measured, not style).
#[allow(clippy::manual_async_fn)]
pub fn serve(
    stream: Stream,
    who: Peer,
    ctx: Arc<RouteContext>,
    shutdown: CancellationToken,
    listed: Arc<Entry>,
) -> impl std::future::Future<Output = u64> + Send + 'static {
    // An async block, not an async fn: an async fn keeps its arguments beside the locals it
    // moves them into (the peer twice, 120 bytes, for the connection's whole life); the block
    // uses what it captured in place.
    async move {
        let listed = &*listed;
        let mut ctx = ctx;
        let _open = ctx.generation.session_opened();
        let peer = who.addr;
        let mut link = Link::with_framing(stream, ctx.route.max_message_bytes, ctx.route.framing)
            .with_budget(crate::wire::budget::Budget::shared().clone());
        // Boxed: a two-way delivery takes the lanes along (a pointer moved, not the lanes).
        let mut lanes = Box::new(Lanes::new(&ctx.dispatch, ctx.route.upstream.connections));
        // Both directions of a paired forward route: each with one message in flight, neither
        // waiting for the other's ack (made at the first message; `None` on other routes).
        let mut two_way: Option<Box<TwoWay<'_>>> = None;
        // MLLP release 2 towards the sender: copies of a frame our commit ACK already answered.
        let mut resends = commit::Resends::default();
        let mut frame_started: Option<Instant> = None;
        // When the sender last sent anything; read from the clock only for an `idle_timeout`.
        let mut last_read = Instant::now();
        let heard_from_sender = |ctx: &RouteContext, last_read: &mut Instant| {
            if ctx.route.idle_timeout.is_some() {
                *last_read = Instant::now();
            }
        };
        let mut messages = 0u64;
        // Resolves when a reload replaces the route's context; `None` once the route has ended.
        let mut reloaded = Some(Box::pin(ctx.generation.replaced()));

        // The idle and receive timeouts' timer, moved lazily rather than set anew for every read
        // (allocated only if one of them is ever armed).
        let mut read_timer = DeadlineTimer::default();
        // `idle_reopen: at-once`: when the paired upstream connection has been quiet too long.
        let mut idle_upstream_timer = DeadlineTimer::default();
        // One shutdown waiter for the whole session: a new `cancelled()` per message would register
        // with (and leave) the token's waiter list, under its lock, twice per message; polled
        // again only once the token woke the task (`Woken`).
        let mut shutdown_signal = std::pin::pin!(Woken::new(shutdown.cancelled()));

        // An event already waited for (two-way: the first after a delivery started).
        let mut ready: Option<Event> = None;
        let end = 'session: loop {
            // Answer every complete frame already read (set aside first) before reading again.
            loop {
                let item = if two_way.as_ref().is_some_and(|tw| tw.forwarding()) {
                    // Two-way, while the sender's message is in flight: its next messages wait
                    // their turn where they are (set aside or in the buffer, in order); only its
                    // answer to the receiver's message in flight is looked for among them.
                    let Some(tw) = two_way.as_deref().filter(|tw| tw.reversing()) else {
                        break;
                    };
                    let release2 = ctx.route.release == MllpRelease::Two;
                    let before = link.set_aside_len();
                    let taken = link.take_ahead(|item| {
                        (release2 && commit::is_commit(item)) || tw.overtakes(item)
                    });
                    if link.set_aside_len() != before {
                        frame_started = None; // frames came out: one under way now is a new one
                    }
                    match taken {
                        Some(item) => item,
                        None => break,
                    }
                } else {
                    match link.take_set_aside().or_else(|| link.try_decode()) {
                        Some(item) => item,
                        None => break,
                    }
                };
                frame_started = None;
                let release2 = ctx.route.release == MllpRelease::Two;
                if release2 && commit::is_commit(&item) {
                    continue; // a commit block nothing waits for (e.g. a repeated one)
                }
                // Two-way: the sender's ack of the receiver's message in flight goes to the
                // receiver, and a late ack of an earlier one is dropped.
                if let Some(tw) = two_way.as_deref_mut() {
                    match tw.classify(&item) {
                        FromSender::Answer => {
                            let answered =
                                tw.sender_answered(&ctx, &mut link, &mut lanes, item, &who);
                            if let Err(lost) = Box::pin(answered).await {
                                break 'session lost_end(lost);
                            }
                            continue;
                        }
                        FromSender::StrayAck => {
                            crate::inbound::two_way::stray_ack(&ctx, &item, &who);
                            continue;
                        }
                        FromSender::Message => {}
                    }
                }
                if let (true, Decoded::Frame(frame)) = (release2, &item) {
                    if resends.is_copy(frame.payload()) {
                        commits::audit_copy(&ctx, frame, &who);
                        continue;
                    }
                }
                let idle_both_ways = two_way.as_ref().is_none_or(|tw| tw.idle());
                if ctx.generation.is_replaced() && reloaded.is_some() && idle_both_ways {
                    match follow_reload(&mut ctx, &mut lanes, &link, &who) {
                        Ok(Some(next)) => reloaded = Some(next),
                        Ok(None) => reloaded = None,
                        Err(end) => break 'session end,
                    }
                    rewire(&mut two_way, &mut lanes);
                }
                messages += 1;
                listed.message();
                listed.set_state(State::AwaitingAck);
                if two_way.is_none() && lanes.two_way() {
                    // At the first message: no idle connection carries the two-way state.
                    two_way = TwoWay::new(&mut lanes);
                }
                let item = match (item, two_way.as_deref_mut()) {
                    // Two-way: the delivery runs beside the other direction, holding the lanes.
                    (Decoded::Frame(frame), Some(tw)) => {
                        let lent = std::mem::replace(&mut lanes, tw.spare_lanes());
                        tw.start_forward(forwarding(&ctx, lent, frame, &who));
                        // With the reverse direction idle nothing but the delivery and the
                        // receiver's own frames can happen (the sender is not read meanwhile, as
                        // on any connection): wait for them here, without the full select.
                        if !tw.reversing() {
                            let happened = std::future::poll_fn(|cx| tw.poll_event(cx)).await;
                            ready = Some(Event::TwoWay(happened));
                            break;
                        }
                        continue;
                    }
                    (item, _) => item,
                };
                let answer = match &item {
                    // Boxed: delivering a message is the largest state a session can be in (about
                    // 2 KiB, most of it the upstream exchange); on the heap only while a message is
                    // in flight, it does not size every idle connection's task (issue 7: one
                    // allocation per message against ~2 KiB per idle connection, BENCHMARKS.md).
                    Decoded::Frame(frame) => {
                        Box::pin(handle_message(&ctx, &mut lanes, frame, &who)).await
                    }
                    Decoded::Oversize { head, len } => answer_oversize(&ctx, head, *len, &who),
                };
                let frame = match &item {
                    Decoded::Frame(frame) => Some(frame),
                    Decoded::Oversize { .. } => None,
                };
                answering(&answer, listed);
                let written = write_answer(&ctx, &mut link, answer, frame, &mut resends, &who);
                if let Err(end) = written.await {
                    break 'session end;
                }
            }
            // Then every message the receiver sent on its own, while that direction is free.
            if let Some(tw) = two_way.as_deref_mut() {
                let mut relayed_any = false;
                while tw.next_to_relay(&mut lanes, false) {
                    // Boxed, like the rare paths below: they would otherwise size every session.
                    let relayed = tw.relay_next(&ctx, &mut link, &mut lanes, &who);
                    if let Err(lost) = Box::pin(relayed).await {
                        break 'session lost_end(lost);
                    }
                    relayed_any = true;
                    messages += 1;
                    listed.message();
                    heard_from_sender(&ctx, &mut last_read);
                }
                // Relaying may have read the sender's next frames (release 2, waiting for its
                // commit): serve them before reading again.
                if relayed_any {
                    continue 'session;
                }
            }

            let forwarding = two_way.as_ref().is_some_and(|tw| tw.forwarding());
            let reversing = two_way.as_ref().is_some_and(|tw| tw.reversing());
            let busy = forwarding || reversing;
            // While only its own message is in flight the sender is not read (backpressure); while
            // the receiver's is too, it is read for its answer, as long as what it sends meanwhile
            // has room to wait its turn.
            let read_sender = !forwarding || (reversing && link.set_aside_len() < MAX_SET_ASIDE);
            let deadline = if !read_sender {
                None
            } else if link.in_frame() {
                let started = *frame_started.get_or_insert_with(Instant::now);
                Some(started + ctx.route.receive_timeout)
            } else if busy {
                None // the sender is waiting for an answer, not idle
            } else {
                ctx.route.idle_timeout.map(|idle| last_read + idle)
            };
            let in_frame = link.in_frame();
            let upstream_in_frame = lanes.receiver_in_frame();
            let idle_upstream_at = lanes.idle_receiver_deadline().filter(|_| !reversing);
            let event = if let Some(event) = ready.take() {
                event
            } else {
                let read = async {
                    match deadline {
                        Some(deadline) => read_timer
                            .limit(deadline.into(), link.read_more())
                            .await
                            .ok(),
                        None => Some(link.read_more().await),
                    }
                };
                // The receiver's own messages wait in its connection while one is in flight.
                let watch_receiver = lanes.watching_receiver() && !reversing;
                let receiver = lanes.read_receiver();
                let idle = async {
                    match idle_upstream_at {
                        // Nothing to do but wait: this returns (`Err`) when `at` comes.
                        Some(at) => {
                            let waited =
                                idle_upstream_timer.limit(at.into(), std::future::pending::<()>());
                            let _ = waited.await;
                        }
                        None => std::future::pending().await,
                    }
                };
                // A poll function: the session carries a reference here, not a future's state.
                let crossing = std::future::poll_fn(|cx| match two_way.as_deref_mut() {
                    Some(tw) => tw.poll_event(cx),
                    None => std::task::Poll::Pending,
                });
                let between_messages = !in_frame && !upstream_in_frame && !busy;
                let reload = async {
                    match reloaded.as_mut() {
                        Some(signal) => signal.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = &mut shutdown_signal, if between_messages => Event::Shutdown,
                    _ = reload, if between_messages => Event::Reloaded,
                    happened = crossing, if busy => Event::TwoWay(happened),
                    outcome = read, if read_sender => Event::Sender(outcome),
                    outcome = receiver, if watch_receiver => Event::Receiver(outcome),
                    _ = idle, if idle_upstream_at.is_some() => Event::IdleUpstream,
                }
            };
            match event {
                Event::Shutdown if listed.close_requested() => break End::Operator,
                Event::Shutdown => break End::Shutdown,
                Event::Sender(None) if in_frame => break End::ReceiveTimeout,
                Event::Sender(None) => break End::IdleTimeout,
                Event::Sender(Some(Ok(0))) => break End::PeerClosed,
                Event::Sender(Some(Ok(n))) => {
                    listed.read(n);
                    if link.in_frame() {
                        listed.set_state(State::Receiving);
                    }
                    heard_from_sender(&ctx, &mut last_read);
                    if messages == 0
                        && ctx.route.tls.is_none()
                        && crate::inbound::sniff::looks_like_tls(link.buffered())
                    {
                        tracing::warn!(route = %ctx.name, %peer, proxy = who.proxy(), "TLS handshake on a plaintext listener; closing (configure tls: on this route, or connect without TLS)");
                        break End::TlsOnPlaintext;
                    }
                }
                Event::Sender(Some(Err(err))) => {
                    tracing::debug!(route = %ctx.name, %peer, proxy = who.proxy(), error = %err, "read from sender failed");
                    break End::ReadError;
                }
                Event::Receiver(Ok(0)) | Event::Receiver(Err(_)) => {
                    tracing::debug!(route = %ctx.name, %peer, proxy = who.proxy(), "the receiver closed the paired connection; the next message opens a new one");
                    lanes.receiver_lost();
                }
                Event::Receiver(Ok(_)) => {}
                Event::IdleUpstream => {
                    Box::pin(lanes.reopen_idle_receiver()).await;
                }
                Event::Reloaded => {
                    match follow_reload(&mut ctx, &mut lanes, &link, &who) {
                        Ok(Some(next)) => reloaded = Some(next),
                        Ok(None) => reloaded = None,
                        Err(end) => break end,
                    }
                    rewire(&mut two_way, &mut lanes);
                }
                Event::TwoWay(happened) => {
                    let Some(tw) = two_way.as_deref_mut() else {
                        continue;
                    };
                    match happened {
                        // Relayed at the top of the loop.
                        Happened::Arrived => {}
                        Happened::ReverseDue => {
                            Box::pin(tw.reverse_due(&ctx, &mut lanes, &who)).await
                        }
                        Happened::Forwarded => {
                            let Some(Forwarded {
                                answer,
                                lanes: home,
                                frame,
                            }) = tw.take_forwarded()
                            else {
                                continue;
                            };
                            tw.keep_spare(std::mem::replace(&mut lanes, home));
                            if let Some(first) = lanes.leftover_answer() {
                                Box::pin(tw.write_leftovers(&ctx, &mut lanes, first)).await;
                            }
                            // What the receiver sent before this ack reaches the sender before it.
                            while tw.next_to_relay(&mut lanes, true) {
                                let relayed = tw.relay_next(&ctx, &mut link, &mut lanes, &who);
                                if let Err(lost) = Box::pin(relayed).await {
                                    break 'session lost_end(lost);
                                }
                                messages += 1;
                                listed.message();
                            }
                            answering(&answer, listed);
                            let frame = Some(&frame);
                            let written =
                                write_answer(&ctx, &mut link, answer, frame, &mut resends, &who);
                            if let Err(end) = written.await {
                                break 'session end;
                            }
                        }
                    }
                }
            }
        };
        if let Some(tw) = two_way.take() {
            Box::pin(tw.close(&ctx, &mut lanes, &who)).await;
        }

        let stats = link.stats();
        let partial = link.in_frame();
        if partial {
            tracing::warn!(route = %ctx.name, %peer, proxy = who.proxy(), reason = end.as_str(), "connection ended inside a frame; the partial message was dropped and never forwarded");
        }
        crate::ops::metrics::connection_closed(&ctx.name, end.label());
        crate::ops::notify::connection_closed(&ctx.name, peer, end.label(), messages);
        tracing::info!(
            route = %ctx.name,
            %peer,
            proxy = who.proxy(),
            reason = end.as_str(),
            messages,
            noise_bytes = stats.noise_bytes,
            restarted_frames = stats.restarted_frames,
            malformed_frames = stats.malformed_frames,
            empty_frames = stats.empty_frames,
            "connection closed"
        );
        // Nothing more can be written to a sender that stopped reading (a TLS close_notify would
        // wait on the full buffers like the ack did).
        if !matches!(
            end,
            End::PeerClosed | End::ReadError | End::WriteError | End::SendTimeout
        ) {
            link.shutdown().await;
        }
        messages
    }
}

/// A reload replaced the route's context: checks this connection against the newest one. Not
/// admitted: logged with the reason and `Err` (the session closes; its in-flight message was
/// answered). Admitted: the session goes on under the new context (its rules and limits from
/// the next message; its own upstream connections replaced when the upstream changed), and the
/// signal of the next reload is returned. `Ok(None)`: the route ended (removed or restarted;
/// its shutdown token closes the session), nothing more to follow.
fn follow_reload(
    ctx: &mut Arc<RouteContext>,
    lanes: &mut Lanes,
    link: &Link<Stream>,
    who: &Peer,
) -> Result<Option<ReloadSignal>, End> {
    let Some(next) = ctx.generation.newest() else {
        return Ok(None);
    };
    let certs = link.get_ref().peer_certificates();
    if let Some(reason) = readmit::refused(&next, who, certs.as_deref()) {
        ctx.generation.rechecked(true);
        tracing::warn!(route = %next.name, peer = %who.addr, proxy = who.proxy(), identity = who.identity(), reason, "open connection no longer admitted by the reloaded config; closing it after its in-flight message");
        return Err(End::NotAdmitted);
    }
    ctx.generation.rechecked(false);
    if readmit::delivery_changed(ctx, &next) {
        tracing::debug!(route = %next.name, peer = %who.addr, upstream = %next.dispatch.describe(), "the reload changed the upstream; this connection's upstream connections are replaced");
        *lanes = Lanes::new(&next.dispatch, next.route.upstream.connections);
    }
    *ctx = next;
    Ok(Some(Box::pin(ctx.generation.replaced())))
}

/// Resolves when the route's context a session runs under is replaced.
type ReloadSignal = std::pin::Pin<Box<crate::route::Replaced>>;

/// Writes the answer to one of the sender's messages. Release 1: the ack (if any). Release 2:
/// the commit block first (ACK when the message was delivered or queued, NAK when it was
/// refused, and then nothing more), then the ack, sent until the sender commits it.
fn write_answer<'a, S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &'a RouteContext,
    link: &'a mut Link<S>,
    answer: Answer,
    frame: Option<&'a Frame>,
    resends: &'a mut commit::Resends,
    who: &'a Peer,
) -> impl std::future::Future<Output = Result<(), End>> + 'a {
    // Taken apart before the future is made: an async fn would hold the whole answer twice
    // (its argument and its local) beside the write, in the session's largest state, which
    // sizes every connection's memory, idle ones too.
    let parts = match answer {
        Answer::Close(_) => Err(End::DeliveryFailure),
        Answer::Ack { ack, committed, .. } => Ok((Some(ack), committed)),
        Answer::Silent { committed, .. } => Ok((None, committed)),
    };
    async move {
        let (ack, committed) = parts?;
        let written = if ctx.route.release == MllpRelease::One {
            match &ack {
                // A sender that does not read its acks fills the kernel's buffers and then this
                // write waits: close it after `send_timeout` rather than hold the ack forever.
                Some(ack) => {
                    match tokio::time::timeout(ctx.route.send_timeout, link.send_payload(ack)).await
                    {
                        Ok(written) => written,
                        Err(_) => {
                            tracing::warn!(route = %ctx.name, peer = %who.addr, proxy = who.proxy(), send_timeout = %humantime::format_duration(ctx.route.send_timeout), "the sender does not read its acks; closing the connection");
                            return Err(End::SendTimeout);
                        }
                    }
                }
                None => Ok(()),
            }
        } else {
            // Boxed: MLLP release 2 waits for commit blocks, a larger state than release 1's
            // single write, and most routes never use it.
            let answered = commits::answer(ctx, link, (ack, committed), frame, resends, who);
            Box::pin(answered).await.map_err(|_| End::Flooded)?
        };
        written.map_err(|err| {
            tracing::debug!(route = %ctx.name, peer = %who.addr, proxy = who.proxy(), error = %err, "could not write the answer to the sender");
            End::WriteError
        })
    }
}

/// Dispatches one frame and writes its audit line (never its payload).
async fn handle_message(
    ctx: &RouteContext,
    lanes: &mut Lanes,
    frame: &Frame,
    who: &Peer,
) -> Answer {
    let started = Instant::now();
    let peer = who.addr;
    let audit = |header: Option<&Header<'_>>,
                 outcome: &'static str,
                 ack: Option<AckCode>,
                 rule: Option<&str>,
                 problem: Option<(&'static str, &str)>| {
        audit::record(
            &audit::Entry {
                route: &ctx.metrics,
                direction: "from_sender",
                peer,
                proxy: who.proxy,
                identity: who.identity(),
                header,
                bytes: frame.len() as u64,
                outcome,
                ack,
                started,
                rule,
                problem,
            },
            frame.payload(),
        )
    };
    // A byte order mark, line breaks or spaces before the header are skipped to read it; the
    // frame goes on as it came.
    let payload = &frame.payload()[hl7::leading_bytes(frame.payload())..];
    // Per-source rate: wait (backpressure: nothing more is read meanwhile) or refuse.
    while let Err(wait) = ctx.limits.check_message(peer.ip(), frame.len()) {
        if ctx.limits.on_limit() == OnLimit::Reject {
            let header = Header::parse(payload).ok();
            crate::ops::metrics::rate_limited(&ctx.name);
            let (ack, code) = Acking::of(payload, header).ack(Says::not_now("rate limit"));
            audit(
                header.as_ref(),
                "rate_limited",
                Some(code),
                None,
                Some(("rate_limited", "too many messages from this source")),
            );
            return Answer::refused(ack, code, "rate_limited");
        }
        tracing::debug!(route = %ctx.name, %peer, proxy = who.proxy(), wait_ms = wait.as_millis() as u64, "rate limited: delaying");
        tokio::time::sleep(wait).await;
    }
    // A message the guard refuses for how it is written: AR with its ERR-3 condition, the
    // reason on its audit line, never forwarded.
    let refuse = |shown: Option<Header<'_>>, reason: &'static str, detail: &str, says: Says<'_>| {
        let (ack, code) = Acking::of(payload, shown).ack(says);
        audit(
            shown.as_ref(),
            "rejected",
            Some(code),
            None,
            Some((reason, detail)),
        );
        Answer::refused(ack, code, "rejected")
    };
    let header = match read_header(payload) {
        Ok(header) => header,
        Err(u) => return refuse(u.header, u.reason, &u.detail, u.says()),
    };
    // No smuggling across framings: bytes that frame messages on one side of the route (or of
    // a named upstream a rule may pick) would cut this payload into frames no rule saw there.
    let sender_framing = ctx.route.framing;
    let receiver_framings = std::iter::once(ctx.route.upstream.framing)
        .chain(ctx.named_upstreams.values().map(|u| u.config().framing));
    for receiver_framing in receiver_framings {
        if let Some(b) = Framing::smuggled_byte(frame.payload(), sender_framing, receiver_framing) {
            let detail = b.to_string();
            let says = Says::refused(ErrorCode::DataType, &detail);
            return refuse(Some(header), "framing_bytes", &detail, says);
        }
    }
    // Every message in a frame is seen: outside a batch, a second MSH is refused, or (inspect)
    // judged by the rules like the first; in a batch every message is (or the batch refused);
    // the frame goes on only if all of them may.
    let others = match messages::judged(ctx, payload, &header, who, &audit).await {
        Ok(others) => others,
        Err(refusal) => return refusal,
    };
    // The frame's outcome, on the first header's line and on each later message's.
    let audit_frame = |outcome: &'static str,
                       ack: Option<AckCode>,
                       rule: Option<&str>,
                       problem: Option<(&'static str, &str)>| {
        audit(Some(&header), outcome, ack, rule, problem);
        for other in &others {
            audit(Some(other), outcome, ack, None, problem);
        }
    };
    // A batch's rules are its messages' (all of them agree, or it was refused above); a batch
    // without messages meets the rules with its header.
    let first_message = match header.kind() {
        HeaderKind::Fhs | HeaderKind::Bhs => others.first(),
        HeaderKind::Msh => None,
    };
    let judged = first_message.unwrap_or(&header);
    let facts = Facts {
        peer: peer.ip(),
        identities: &who.identities,
        header: judged,
    };
    let acking = Acking::of(payload, Some(header));
    // `shutdown_grace` ended before the receiver (or the queue) answered: the message may have
    // reached it; the audit line says so, and the guard's last ERROR line counts these.
    let abandoned = || {
        ctx.abandon.counted();
        let detail =
            "shutdown_grace ended before the delivery finished; the receiver may have the message";
        audit_frame(
            "abandoned_at_shutdown",
            None,
            None,
            Some(("abandoned_at_shutdown", detail)),
        );
        Answer::Close(Failure {
            side: Side::Internal,
            reason: "abandoned_at_shutdown",
            detail: detail.to_string(),
            retry_helps: true,
        })
    };
    let answer = match rules::evaluate(&ctx.route.rules, &facts) {
        Decision::Allow { .. } if ctx.refuses_while_paused() => {
            let (ack, code) = acking.ack(Says::not_now("route paused"));
            audit_frame("paused", Some(code), None, Some(("paused", "route paused")));
            return Answer::refused(ack, code, "paused");
        }
        Decision::Allow { .. } => {
            let delivery = ctx.dispatch.deliver(
                lanes,
                frame,
                &header,
                first_message,
                who.origin(),
                who.sender_id(),
            );
            match or_abandoned(ctx, delivery).await {
                Some(answer) => answer,
                None => return abandoned(),
            }
        }
        Decision::Reject { rule } => {
            crate::ops::metrics::rule_rejected(&ctx.name, rule);
            let text = format!("rejected by rule {rule}");
            let error = messages::rule_error(&ctx.route.rules, rule);
            let (ack, code) = acking.ack(Says::refused(error, &text));
            audit_frame("rejected_by_rule", Some(code), Some(rule), None);
            return Answer::refused(ack, code, "rejected_by_rule");
        }
        Decision::Drop { rule } => {
            crate::ops::metrics::rule_rejected(&ctx.name, rule);
            audit_frame("dropped_by_rule", None, Some(rule), None);
            return Answer::Close(Failure {
                side: Side::Sender,
                reason: "dropped_by_rule",
                detail: format!("dropped by rule {rule}"),
                retry_helps: false,
            });
        }
        Decision::Route { upstream: name, .. } => match ctx.named_upstreams.get(name) {
            Some(upstream) => {
                let on_failure = ctx.route.on_upstream_failure;
                let origin = who.origin();
                let to = (&header, first_message);
                let delivery =
                    Dispatch::deliver_named(upstream, name, on_failure, lanes, frame, to, origin);
                match or_abandoned(ctx, delivery).await {
                    Some(answer) => answer,
                    None => return abandoned(),
                }
            }
            // The config check guarantees the name exists; refuse rather than guess if not.
            None => {
                tracing::error!(route = %ctx.name, upstream = name, control_id = %Printable(header.control_id()), "a rule names an upstream that does not exist");
                return acking.refused(Says::not_now("receiver unavailable"), "no_such_upstream");
            }
        },
    };
    match &answer {
        Answer::Ack {
            code,
            outcome,
            problem,
            ..
        } => {
            let problem = problem.as_ref().map(|p| (p.reason, p.detail.as_str()));
            audit_frame(outcome, Some(*code), None, problem);
        }
        Answer::Silent { outcome, .. } => audit_frame(outcome, None, None, None),
        Answer::Close(problem) => {
            let detail = (problem.reason, problem.detail.as_str());
            audit_frame("closed", None, None, Some(detail));
        }
    }
    answer
}

/// A delivery's answer, or `None` when `shutdown_grace` ended first (the delivery is dropped).
async fn or_abandoned(
    ctx: &RouteContext,
    delivery: impl std::future::Future<Output = Answer>,
) -> Option<Answer> {
    tokio::select! {
        biased;
        answer = delivery => Some(answer),
        _ = ctx.abandon.due() => None,
    }
}

/// A frame over `max_message_bytes` was discarded: answer AE, keeping the connection open.
fn answer_oversize(ctx: &RouteContext, head: &[u8], len: u64, who: &Peer) -> Answer {
    let max = ctx.route.max_message_bytes;
    let detail = format!("message of {len} bytes exceeds max_message_bytes ({max} bytes)");
    let head = &head[hl7::leading_bytes(head)..];
    let header = Header::parse(head).ok();
    let (ack, code) = Acking::of(head, header).ack(Says::not_now("message too large"));
    let problem = Some(("oversize", detail.as_str()));
    messages::audit_undelivered(ctx, who, (head, len), "oversize", Some(code), problem);
    Answer::refused(ack, code, "oversize")
}
