//! Timeouts that move with every message without a timer per message: one timer, armed at the
//! first deadline and moved only when it fires before the current one (it was armed for an
//! earlier message), so a busy connection re-registers it about once per timeout period instead
//! of registering and removing a timer for every message. Used for an upstream connection's
//! ack timeout and a sender's idle and receive timeouts. Must not know what the work it limits
//! is.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// One timer, reused for a connection's successive deadlines.
#[derive(Default)]
pub struct DeadlineTimer(Option<Pin<Box<Sleep>>>);

/// The deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

impl DeadlineTimer {
    /// Runs `work` until it finishes (`Ok`) or `deadline` passes (`Err`).
    pub async fn limit<F: Future>(
        &mut self,
        deadline: Instant,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // It must fire by this deadline; firing earlier is checked below.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            loop {
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if Instant::now() >= deadline => {
                        return Poll::Ready(Err(Elapsed))
                    }
                    // Armed for an earlier message: move it to this one's deadline.
                    Poll::Ready(()) => timer.as_mut().reset(deadline),
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_is_returned_and_slow_work_is_cut_at_the_deadline() {
        let mut clock = DeadlineTimer::default();
        let start = Instant::now();
        let quick = clock.limit(start + 10 * SECOND, async { 7 }).await;
        assert_eq!(quick.unwrap(), 7);
        let slow = tokio::time::sleep(60 * SECOND);
        assert!(clock.limit(start + 10 * SECOND, slow).await.is_err());
        assert_eq!(
            Instant::now() - start,
            10 * SECOND,
            "cut exactly at the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_left_from_an_earlier_exchange_does_not_cut_a_later_one_short() {
        let mut clock = DeadlineTimer::default();
        let start = Instant::now();
        clock.limit(start + 10 * SECOND, async {}).await.unwrap();
        // The timer, still armed for the first deadline, fires during this exchange.
        tokio::time::sleep(5 * SECOND).await;
        let later = clock.limit(start + 15 * SECOND, tokio::time::sleep(8 * SECOND));
        assert!(
            later.await.is_ok(),
            "8 s of work against a deadline 10 s away"
        );
        // And after firing early it still ends the next one at its own deadline.
        let deadline = Instant::now() + 3 * SECOND;
        assert!(clock
            .limit(deadline, std::future::pending::<()>())
            .await
            .is_err());
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_armed_one_moves_the_timer_forward() {
        // e.g. a reload that shortened ack_timeout: the old, later arming must not be waited out.
        let mut clock = DeadlineTimer::default();
        let start = Instant::now();
        clock.limit(start + 30 * SECOND, async {}).await.unwrap();
        let deadline = start + 2 * SECOND;
        assert!(clock
            .limit(deadline, std::future::pending::<()>())
            .await
            .is_err());
        assert_eq!(Instant::now(), deadline);
    }
}
