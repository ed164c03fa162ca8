//! Two directions on one paired connection: the sender's messages to the receiver and the
//! receiver's own messages to the sender, each direction with at most one message in flight,
//! neither waiting for the other's ack.
//!
//! A small state machine per direction. **Forward**: idle, or a sender's message out (its
//! delivery, [`Forwarding`], holds the session's [`Lanes`] until the receiver's ack comes back;
//! meanwhile the receiver's own messages reach this module over the side channel
//! [`SessionEnd`]). **Reverse**: idle, or a receiver's message relayed and its answer awaited
//! ([`reverse::Reverse`]). Every frame is classified by whether it is an acknowledgement (MSA
//! present) answering the other direction's message in flight, or a new message: from the
//! receiver, in the exchange ([`crate::upstream`]); from the sender, here ([`from_sender`]). A
//! message waits only for its own direction to be free (the sender's wait where they are, on
//! its link, and only its answers are looked for among them); an ack of one of the receiver's
//! messages no longer in flight (a late one, after the guard answered in its stead) is dropped
//! with an audit line, never forwarded as a message, never acked. Answers to the receiver go on
//! the connection its message came on: written here when the lanes are home, else handed to the
//! exchange holding them.
//!
//! Owns the reverse direction's state, the forward delivery in flight, and which way each
//! frame goes. Must not know how a delivery is judged or made (the session builds the
//! [`Forwarding`]), how connections are made, or what the route's rules say.

pub mod reverse;

pub use reverse::SenderLost;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::dispatch::Lanes;
use crate::outcome::Answer;
use crate::route::{Peer, RouteContext};
use crate::upstream::crossing::{Arrived, SessionEnd, ToReceiver};
use crate::wire::codec::{Decoded, Frame};
use crate::wire::hl7::{self, AckView};
use crate::wire::link::Link;
use reverse::{Relayed, Reverse};

/// What a frame from the sender is, on a two-way connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromSender {
    /// The ack (MSA-2) of the receiver's message in flight.
    Answer,
    /// An original-mode ack (MSA present, MSH-15 empty) of a frame the receiver sent that is no
    /// longer in flight (a late ack, after the guard answered in its stead; a second ack).
    StrayAck,
    /// A message of its own: an application ack in enhanced mode (MSH-15 valued) is one too,
    /// and so is an ack that names nothing the receiver sent (an ACK the sender sends as any
    /// other message, which is delivered as on a route without a second direction).
    Message,
}

/// How many control ids of the receiver's frames relayed to the sender are remembered, to
/// know a late ack of one of them.
const RECENT: usize = 8;

/// Classifies a frame's `payload` from the sender, `awaited` being the control id of the
/// receiver's message in flight, if any, and `recent` those of the receiver's frames relayed
/// before it.
pub fn from_sender<'r>(
    payload: &[u8],
    awaited: Option<&[u8]>,
    mut recent: impl Iterator<Item = &'r [u8]>,
) -> FromSender {
    let payload = &payload[hl7::leading_bytes(payload)..];
    match AckView::parse_response(payload) {
        Ok(ack) if awaited == Some(ack.acked_control_id()) => FromSender::Answer,
        Ok(ack)
            if ack.header().accept_ack_type().is_empty()
                && recent.any(|id| id == ack.acked_control_id()) =>
        {
            FromSender::StrayAck
        }
        _ => FromSender::Message,
    }
}

/// A sender's message delivered: its answer, the lanes back, and the frame.
pub struct Forwarded {
    pub answer: Answer,
    pub lanes: Box<Lanes>,
    pub frame: Frame,
}

/// The delivery of a sender's message in flight; it holds the session's lanes.
pub type Forwarding<'a> = Pin<Box<dyn Future<Output = Forwarded> + Send + 'a>>;

/// What happened on a busy two-way connection.
pub enum Happened {
    /// The sender's message was answered: [`TwoWay::take_forwarded`].
    Forwarded,
    /// The receiver sent a frame during the delivery: relay it ([`TwoWay::relay_next`]).
    Arrived,
    /// The sender did not answer the receiver's message in time.
    ReverseDue,
}

/// Both directions' state on one sender connection of a paired forward route.
pub struct TwoWay<'a> {
    end: SessionEnd,
    forward: Option<Forwarding<'a>>,
    reverse: Option<Reverse>,
    /// A frame taken from the side channel, to relay next.
    next: Option<Arrived>,
    /// The delivery finished, until the session takes it.
    done: Option<Forwarded>,
    /// The reverse direction's deadline (made at its first message, then moved).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The control ids of the receiver's last frames relayed to the sender (at most
    /// [`RECENT`]; empty, without a buffer, until the receiver sends one).
    recent: VecDeque<Vec<u8>>,
    /// Frames may be left in the side channel from the last delivery.
    handed_over_left: bool,
    /// The placeholder the session holds while a delivery has its lanes (empty lanes).
    spare: Option<Box<Lanes>>,
}

impl<'a> TwoWay<'a> {
    /// The state for new `lanes`, when they are two-way (boxed: most sessions have none): the
    /// side channel's exchange end goes to the lanes. `None` for lanes that have one already.
    pub fn new(lanes: &mut Lanes) -> Option<Box<TwoWay<'a>>> {
        let end = lanes.open_crossing()?;
        Some(Box::new(TwoWay {
            end,
            forward: None,
            reverse: None,
            next: None,
            done: None,
            timer: None,
            recent: VecDeque::new(),
            handed_over_left: false,
            spare: None,
        }))
    }

    /// Empty lanes for the session to hold while a delivery has its own (made once).
    pub fn spare_lanes(&mut self) -> Box<Lanes> {
        self.spare.take().unwrap_or_default()
    }

    /// The placeholder back, once the delivery returned the lanes.
    pub fn keep_spare(&mut self, spare: Box<Lanes>) {
        self.spare = Some(spare);
    }

    /// A sender's message is in flight (the lanes are lent to its delivery, or not taken back).
    pub fn forwarding(&self) -> bool {
        self.forward.is_some() || self.done.is_some()
    }

    /// A receiver's message is in flight, awaiting the sender's answer.
    pub fn reversing(&self) -> bool {
        self.reverse.is_some()
    }

    /// Nothing in flight either way, nothing to relay.
    pub fn idle(&self) -> bool {
        !self.forwarding() && self.reverse.is_none() && self.next.is_none()
    }

    /// What `item`, from the sender, is. Read only once the receiver has sent something: until
    /// then every frame is a message, and the sender's messages are not parsed twice.
    pub fn classify(&self, item: &Decoded) -> FromSender {
        if self.reverse.is_none() && self.recent.is_empty() {
            return FromSender::Message;
        }
        match item {
            Decoded::Frame(frame) => from_sender(
                frame.payload(),
                self.reverse.as_ref().map(Reverse::control_id),
                self.recent.iter().map(Vec::as_slice),
            ),
            Decoded::Oversize { .. } => FromSender::Message,
        }
    }

    /// Whether `item`, from the sender, must not wait behind the sender's own messages: it
    /// answers the receiver's message in flight (or is a stray ack, dropped at once).
    pub fn overtakes(&self, item: &Decoded) -> bool {
        self.reverse.is_some() && self.classify(item) != FromSender::Message
    }

    /// Remembers the control id of a frame of the receiver's relayed to the sender.
    fn relayed(&mut self, control_id: Vec<u8>) {
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(control_id);
    }

    /// A sender's message goes out; its delivery holds the lanes until it is answered.
    pub fn start_forward(&mut self, delivery: Forwarding<'a>) {
        self.forward = Some(delivery);
    }

    /// Polls for the next thing to happen while busy: a frame the receiver sent during the
    /// delivery (taken only while the reverse direction is free), the delivery's answer, or
    /// the reverse direction's deadline. A poll function rather than a future, so that a
    /// session waiting on it carries a reference, not a future's state.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Happened> {
        if self.forward.is_some() && self.reverse.is_none() && self.next.is_none() {
            if let Poll::Ready(Some(arrived)) = self.end.poll_arrived(cx) {
                self.next = Some(arrived);
                return Poll::Ready(Happened::Arrived);
            }
        }
        if let Some(delivery) = self.forward.as_mut() {
            if let Poll::Ready(done) = delivery.as_mut().poll(cx) {
                self.forward = None;
                self.done = Some(done);
                self.handed_over_left = true;
                return Poll::Ready(Happened::Forwarded);
            }
        }
        if let Some(reverse) = &self.reverse {
            let due = tokio::time::Instant::from_std(reverse.deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Happened::ReverseDue);
            }
        }
        Poll::Pending
    }

    /// The delivery that [`Happened::Forwarded`] reported, once.
    pub fn take_forwarded(&mut self) -> Option<Forwarded> {
        self.done.take()
    }

    /// The lanes are home after a delivery, and the exchange left `first` (taken with
    /// [`Lanes::leftover_answer`]) and maybe more answers unwritten: written now.
    pub async fn write_leftovers(
        &mut self,
        ctx: &RouteContext,
        lanes: &mut Lanes,
        first: ToReceiver,
    ) {
        let mut next = Some(first);
        while let Some(answer) = next {
            self.answer_receiver(ctx, lanes, answer).await;
            next = lanes.leftover_answer();
        }
    }

    /// Whether a frame the receiver sent is ready to relay now: the reverse direction is free
    /// and one was taken over during a delivery, or (lanes home, and unless
    /// `handed_over_only`) is read on the paired connection. Takes it (no waiting).
    pub fn next_to_relay(&mut self, lanes: &mut Lanes, handed_over_only: bool) -> bool {
        if self.reverse.is_some() {
            return false;
        }
        // During a delivery, [`TwoWay::poll_event`] takes what is handed over; after it, what
        // is left (the reverse direction was busy then) is taken here.
        if self.next.is_none() && (handed_over_only || self.handed_over_left) {
            self.next = self.end.try_arrived();
            self.handed_over_left = self.next.is_some();
        }
        if self.next.is_none() && !handed_over_only && !self.forwarding() {
            if let (Some(conn), Some(item)) = (lanes.receiver_serial(), lanes.next_from_receiver())
            {
                self.next = Some(Arrived { conn, item });
            }
        }
        self.next.is_some()
    }

    /// Relays the frame [`TwoWay::next_to_relay`] took to the sender; the receiver gets its
    /// answer now when nothing is awaited.
    pub async fn relay_next<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &RouteContext,
        link: &mut Link<S>,
        lanes: &mut Lanes,
        who: &Peer,
    ) -> Result<(), SenderLost> {
        let Some(arrived) = self.next.take() else {
            return Ok(());
        };
        if let Some(id) = reverse::control_id(&arrived.item) {
            self.relayed(id);
        }
        match reverse::relay(ctx, link, arrived, who).await {
            Relayed::Done(answer) => {
                if let Some(answer) = answer {
                    self.answer_receiver(ctx, lanes, answer).await;
                }
            }
            Relayed::Awaiting(reverse) => self.reverse = Some(reverse),
            Relayed::SenderLost(lost, answer) => {
                if let Some(answer) = answer {
                    self.answer_receiver(ctx, lanes, answer).await;
                }
                return Err(lost);
            }
        }
        Ok(())
    }

    /// The sender answered the receiver's message in flight with `reply` (a frame that
    /// [`TwoWay::classify`] found to be [`FromSender::Answer`]): relayed to the receiver.
    pub async fn sender_answered<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ctx: &RouteContext,
        link: &mut Link<S>,
        lanes: &mut Lanes,
        reply: Decoded,
        who: &Peer,
    ) -> Result<(), SenderLost> {
        let Decoded::Frame(reply) = reply else {
            return Ok(());
        };
        let Some(reverse) = self.reverse.take() else {
            return Ok(());
        };
        let (answer, committed) = reverse.answered(ctx, link, reply, who).await;
        self.answer_receiver(ctx, lanes, answer).await;
        committed
    }

    /// The receiver's message in flight got no answer in time: the receiver is told.
    pub async fn reverse_due(&mut self, ctx: &RouteContext, lanes: &mut Lanes, who: &Peer) {
        if let Some(answer) = self.reverse.take().and_then(|r| r.timed_out(ctx, who)) {
            self.answer_receiver(ctx, lanes, answer).await;
        }
    }

    /// The session ends: a delivery in flight is finished (its audit line written; the
    /// sender's answer is dropped with the connection), and the receiver's message in flight
    /// is answered as not delivered.
    pub async fn close(mut self, ctx: &RouteContext, lanes: &mut Box<Lanes>, who: &Peer) {
        let delivery = self.forward.take();
        if let Some(done) = self.done.take() {
            *lanes = done.lanes;
        } else if let Some(delivery) = delivery {
            *lanes = delivery.await.lanes;
        }
        if let Some(first) = lanes.leftover_answer() {
            self.write_leftovers(ctx, lanes, first).await;
        }
        if let Some(answer) = self.reverse.take().and_then(|r| r.sender_lost(ctx, who)) {
            self.answer_receiver(ctx, lanes, answer).await;
        }
    }

    /// Gives the receiver `answer`: on its connection when the lanes are home, else through
    /// the exchange that holds them. Dropped (logged) when that connection has closed.
    async fn answer_receiver(&mut self, ctx: &RouteContext, lanes: &mut Lanes, answer: ToReceiver) {
        if self.forwarding() {
            if self.end.answer(answer).is_err() {
                tracing::warn!(route = %ctx.name, "too many answers to the receiver wait for the exchange in flight; one was dropped");
            }
            return;
        }
        match lanes
            .answer_receiver(&answer, ctx.route.upstream.commit_timeout())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(route = %ctx.name, "the receiver's connection closed before the answer to its message; dropped")
            }
            Err(err) => {
                tracing::warn!(route = %ctx.name, error = %err, "could not answer the receiver's message; dropping its connection")
            }
        }
    }
}

/// The audit line of an ack from the sender of a message of the receiver's no longer in flight
/// (late, after the guard answered the receiver in its stead, or a second one): dropped, not
/// forwarded, not acked.
pub fn stray_ack(ctx: &RouteContext, item: &Decoded, who: &Peer) {
    let Decoded::Frame(frame) = item else {
        return;
    };
    let detail =
        "an ack of a message of the receiver's no longer in flight (late, or a second one); dropped";
    let frame = (frame.payload(), frame.len() as u64);
    let problem = Some(("stray_ack", detail));
    super::messages::audit_undelivered(ctx, who, frame, "stray_ack", None, problem);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(answers: &str, msh15: &str) -> Vec<u8> {
        format!("MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|ACK-{answers}|P|2.5.1|||{msh15}\rMSA|AA|{answers}\r")
            .into_bytes()
    }

    #[test]
    fn a_frame_from_the_sender_is_an_answer_a_stray_ack_or_a_message() {
        let message = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|M1|P|2.5.1\rPID|1\r".to_vec();
        let none = || std::iter::empty::<&[u8]>();
        let r0 = || std::iter::once(&b"R0"[..]);
        assert_eq!(
            from_sender(&ack("R1", ""), Some(b"R1"), none()),
            FromSender::Answer
        );
        assert_eq!(
            from_sender(&ack("R1", "AL"), Some(b"R1"), none()),
            FromSender::Answer,
            "an accept ack that answers the message in flight, whatever its MSH-15"
        );
        assert_eq!(
            from_sender(&ack("R0", ""), Some(b"R1"), r0()),
            FromSender::StrayAck,
            "a late ack of an earlier message of the receiver's"
        );
        assert_eq!(
            from_sender(&ack("R0", ""), None, r0()),
            FromSender::StrayAck
        );
        assert_eq!(
            from_sender(&ack("X9", ""), Some(b"R1"), r0()),
            FromSender::Message,
            "an ack that names nothing the receiver sent is the sender's own message"
        );
        assert_eq!(
            from_sender(&ack("R0", "NE"), Some(b"R1"), r0()),
            FromSender::Message,
            "an application ack (enhanced mode) is a message of its own"
        );
        assert_eq!(
            from_sender(&message, Some(b"R1"), r0()),
            FromSender::Message
        );
        assert_eq!(from_sender(b"not hl7", None, none()), FromSender::Message);
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend(ack("R1", ""));
        assert_eq!(
            from_sender(&with_bom, Some(b"R1"), none()),
            FromSender::Answer
        );
    }
}
