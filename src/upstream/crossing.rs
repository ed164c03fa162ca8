//! The side channel of a two-way paired connection while an exchange holds it: what lets a
//! message cross another on one connection without waiting for its ack.
//!
//! While the sender's message is out and its ack awaited, the exchange alone reads the
//! receiver's connection. A message the receiver sends meanwhile is handed over at once
//! ([`ExchangeEnd`] to [`SessionEnd`]), so the session relays it to the sender now rather than
//! after the ack (which the receiver may hold back until its own message is answered); the
//! session's answers to such messages come back the other way, and the exchange writes them on
//! the connection while it waits. Each item names the connection it belongs to
//! ([`super::UpstreamConn::serial`]): an answer is never written on another connection than the
//! message came on. Bounded both ways by [`MAX_SET_ASIDE`]; a few words per session until
//! something is queued. Must not know senders, what the messages say, or how the session
//! relays them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::wire::codec::Decoded;
use crate::wire::link::MAX_SET_ASIDE;

/// A frame the receiver sent on its own (a message, or an application ack in enhanced mode),
/// and the connection it came on.
#[derive(Debug)]
pub struct Arrived {
    pub conn: u64,
    pub item: Decoded,
}

/// The answer to one such frame, for the connection it came on: the commit block (MLLP release
/// 2) is ACK when `committed`, and then the ack is written; NAK and nothing more otherwise.
#[derive(Debug)]
pub struct ToReceiver {
    pub conn: u64,
    pub committed: bool,
    pub ack: Bytes,
}

/// What both ends share: two small queues (no buffer until something is queued, so an idle
/// session pays a few words, not a channel's preallocated block) and who waits on them.
#[derive(Default)]
struct Shared {
    arrived: VecDeque<Arrived>,
    answers: VecDeque<ToReceiver>,
    /// The session, waiting for an arrival.
    session: Option<Waker>,
    /// The exchange, waiting for an answer.
    exchange: Option<Waker>,
    session_gone: bool,
    exchange_gone: bool,
}

/// The exchange's end: kept with the session's paired connection, lent to each exchange on it.
pub struct ExchangeEnd(Arc<Mutex<Shared>>);

/// The session's end.
pub struct SessionEnd(Arc<Mutex<Shared>>);

/// Why a frame could not be handed over.
#[derive(Debug)]
pub(super) enum NotHanded {
    /// [`MAX_SET_ASIDE`] frames wait already: the receiver floods.
    Flooded,
    /// The session's end is gone; the frame comes back.
    Gone(Decoded),
}

/// A new side channel's two ends.
pub fn pair() -> (ExchangeEnd, SessionEnd) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    (ExchangeEnd(shared.clone()), SessionEnd(shared))
}

/// The shared state; a panic elsewhere cannot poison it into a panic here.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps `cx`'s waker in `slot` (cloned only when it is another task's).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl ExchangeEnd {
    /// Hands a frame the receiver sent on connection `conn` to the session, without waiting.
    pub(super) fn hand_over(&self, conn: u64, item: Decoded) -> Result<(), NotHanded> {
        let waiting = {
            let mut shared = lock(&self.0);
            if shared.session_gone {
                return Err(NotHanded::Gone(item));
            }
            if shared.arrived.len() >= MAX_SET_ASIDE {
                return Err(NotHanded::Flooded);
            }
            shared.arrived.push_back(Arrived { conn, item });
            shared.session.take()
        };
        if let Some(session) = waiting {
            session.wake();
        }
        Ok(())
    }

    /// Polls for the next answer the session has for the receiver; pending for ever once the
    /// session's end is gone.
    pub(super) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<ToReceiver> {
        let mut shared = lock(&self.0);
        match shared.answers.pop_front() {
            Some(answer) => Poll::Ready(answer),
            None => {
                register(&mut shared.exchange, cx);
                Poll::Pending
            }
        }
    }

    /// An answer the session left that no exchange wrote, without waiting.
    pub fn leftover_answer(&mut self) -> Option<ToReceiver> {
        lock(&self.0).answers.pop_front()
    }
}

impl Drop for ExchangeEnd {
    fn drop(&mut self) {
        let waiting = {
            let mut shared = lock(&self.0);
            shared.exchange_gone = true;
            shared.session.take()
        };
        if let Some(session) = waiting {
            session.wake();
        }
    }
}

impl SessionEnd {
    /// The next frame handed over, without waiting.
    pub fn try_arrived(&mut self) -> Option<Arrived> {
        lock(&self.0).arrived.pop_front()
    }

    /// Polls for the next frame handed over; `Ready(None)` once no exchange end is left.
    pub fn poll_arrived(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arrived>> {
        let mut shared = lock(&self.0);
        if let Some(arrived) = shared.arrived.pop_front() {
            return Poll::Ready(Some(arrived));
        }
        if shared.exchange_gone {
            return Poll::Ready(None);
        }
        register(&mut shared.session, cx);
        Poll::Pending
    }

    /// Gives an answer to the exchange that holds the connection; it comes back when
    /// [`MAX_SET_ASIDE`] answers wait already, or the exchange end is gone.
    pub fn answer(&self, answer: ToReceiver) -> Result<(), ToReceiver> {
        let waiting = {
            let mut shared = lock(&self.0);
            if shared.exchange_gone || shared.answers.len() >= MAX_SET_ASIDE {
                return Err(answer);
            }
            shared.answers.push_back(answer);
            shared.exchange.take()
        };
        if let Some(exchange) = waiting {
            exchange.wake();
        }
        Ok(())
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        lock(&self.0).session_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::Frame;

    fn item(payload: &[u8]) -> Decoded {
        Decoded::Frame(Frame::from_payload(payload).unwrap())
    }

    #[tokio::test]
    async fn frames_and_answers_cross_in_order_and_bounded() {
        let (mut exchange, mut session) = pair();
        let empty = std::future::poll_fn(|cx| Poll::Ready(session.poll_arrived(cx).is_pending()));
        assert!(empty.await, "nothing handed over yet");
        exchange.hand_over(7, item(b"MSH|1")).unwrap();
        exchange.hand_over(7, item(b"MSH|2")).unwrap();
        let first = std::future::poll_fn(|cx| session.poll_arrived(cx))
            .await
            .unwrap();
        assert_eq!(first.conn, 7);
        assert!(matches!(first.item, Decoded::Frame(f) if f.payload() == b"MSH|1"));
        assert!(session.try_arrived().is_some());
        assert!(session.try_arrived().is_none());
        for _ in 0..MAX_SET_ASIDE {
            exchange.hand_over(7, item(b"MSH|x")).unwrap();
        }
        assert_eq!(lock(&exchange.0).arrived.len(), MAX_SET_ASIDE);
        assert!(matches!(
            exchange.hand_over(7, item(b"MSH|y")),
            Err(NotHanded::Flooded)
        ));

        let answer = |n: u8| ToReceiver {
            conn: 7,
            committed: true,
            ack: Bytes::from(vec![n]),
        };
        session.answer(answer(1)).unwrap();
        let first = std::future::poll_fn(|cx| exchange.poll_answer(cx)).await;
        assert_eq!(first.ack[..], [1]);
        session.answer(answer(2)).unwrap();
        assert_eq!(exchange.leftover_answer().unwrap().ack[..], [2]);
        assert!(exchange.leftover_answer().is_none());

        drop(session);
        assert!(matches!(
            exchange.hand_over(7, item(b"MSH|3")),
            Err(NotHanded::Gone(_))
        ));

        // The exchange end gone: the session stops waiting on it, and an answer comes back.
        let (exchange, mut session) = pair();
        drop(exchange);
        let ended = std::future::poll_fn(|cx| session.poll_arrived(cx)).await;
        assert!(ended.is_none());
        assert!(session.answer(answer(3)).is_err());
    }
}
